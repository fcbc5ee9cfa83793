"""boto3 against a real edgefleet-server: the SageMaker facade as Edge Manager scripts use it.

Run by boto3-facade.test.ts, which starts the server and passes (in the environment):
  EF_ENDPOINT         the operator URL (the facade's endpoint_url)
  EF_ADMIN_TOKEN      a native admin bearer token (to create device-bound keys through the REST API)
  EF_ADMIN_KEY_ID / EF_ADMIN_SECRET, EF_READ_KEY_ID / EF_READ_SECRET   access keys (admin, read-only)
  EF_S3_ENDPOINT, EF_S3_BUCKET   the S3-compatible store (s3rver) the server reads models from and writes to
  EF_MODEL_FILE                  an ONNX model (core's test-model catalogue)
  EF_WORK_DIR                    where to leave the downloaded package for `edgefleet package verify`, and
                                 the handshake files of the Edge Manager flow (devices-registered → agent-running)
botocore's service models are the authority on member names, types, errors, paginators and waiters.
"""

import datetime
import io
import json
import os
import tarfile
import time
import unittest
import urllib.request
from unittest import mock

import boto3
import botocore
import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

ENDPOINT = os.environ["EF_ENDPOINT"]
REGION = "eu-west-1"
CONFIG = Config(retries={"max_attempts": 1}, connect_timeout=10, read_timeout=30)


def client(service="sagemaker", key="ADMIN", **overrides):
    return boto3.client(
        service,
        endpoint_url=ENDPOINT,
        region_name=REGION,
        aws_access_key_id=overrides.get("key_id", os.environ[f"EF_{key}_KEY_ID"]),
        aws_secret_access_key=overrides.get("secret", os.environ[f"EF_{key}_SECRET"]),
        config=CONFIG,
    )


def native(method, path, body=None):
    request = urllib.request.Request(
        ENDPOINT + path,
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": "Bearer " + os.environ["EF_ADMIN_TOKEN"], "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"{}")


def error_of(call):
    try:
        call()
    except ClientError as error:
        return error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"], error.response["Error"].get("Message", "")
    raise AssertionError("expected the call to fail")


OUTPUT = {"S3OutputLocation": "s3://edge-output/captures"}

# The tiny model's input and its shape, as scripts written for Edge Manager give them for an ONNX model: botocore
# 1.29 (Debian 12's python3-boto3) requires InputConfig.DataInputConfig and refuses a CreateCompilationJob without
# it before sending anything; later botocore makes it optional. The facade accepts both (not acted on: nothing is
# compiled); test_data_input_config_optional sends one without, signed by hand past botocore's own check.
DATA_INPUT_CONFIG = '{"x": [1, 16]}'


class FleetsAndDevices(unittest.TestCase):
    def test_flow_fleet_devices_tags_report(self):
        sm = client()
        sm.create_device_fleet(
            DeviceFleetName="flow-fleet",
            Description="boto3 flow",
            OutputConfig=OUTPUT,
            RoleArn="arn:aws:iam::123456789012:role/edge",
            Tags=[{"Key": "team", "Value": "vision"}],
        )
        fleet = sm.describe_device_fleet(DeviceFleetName="flow-fleet")
        self.assertEqual(fleet["DeviceFleetName"], "flow-fleet")
        self.assertEqual(fleet["DeviceFleetArn"], f"arn:aws:sagemaker:{REGION}:000000000000:device-fleet/flow-fleet")
        self.assertEqual(fleet["OutputConfig"]["S3OutputLocation"], OUTPUT["S3OutputLocation"])
        self.assertIsInstance(fleet["CreationTime"], datetime.datetime)

        sm.register_devices(
            DeviceFleetName="flow-fleet",
            Devices=[{"DeviceName": f"flow-dev-{i}", "Description": f"camera {i}"} for i in range(3)],
            Tags=[{"Key": "site", "Value": "berlin"}],
        )
        device = sm.describe_device(DeviceName="flow-dev-1", DeviceFleetName="flow-fleet")
        self.assertEqual(device["Description"], "camera 1")
        self.assertEqual(device["DeviceArn"], f"arn:aws:sagemaker:{REGION}:000000000000:device-fleet/flow-fleet/device/flow-dev-1")
        self.assertNotIn("LatestHeartbeat", device)

        sm.update_devices(DeviceFleetName="flow-fleet", Devices=[{"DeviceName": "flow-dev-1", "IotThingName": "thing-1"}])
        device = sm.describe_device(DeviceName="flow-dev-1", DeviceFleetName="flow-fleet")
        self.assertEqual(device["IotThingName"], "thing-1")
        self.assertEqual(device["Description"], "camera 1")

        listed = sm.list_devices(DeviceFleetName="flow-fleet")["DeviceSummaries"]
        self.assertEqual([d["DeviceName"] for d in listed], ["flow-dev-0", "flow-dev-1", "flow-dev-2"])

        fleet_arn = fleet["DeviceFleetArn"]
        sm.add_tags(ResourceArn=fleet_arn, Tags=[{"Key": "env", "Value": "prod"}])
        tags = sm.list_tags(ResourceArn=fleet_arn)["Tags"]
        self.assertEqual(tags, [{"Key": "env", "Value": "prod"}, {"Key": "team", "Value": "vision"}])
        sm.delete_tags(ResourceArn=fleet_arn, TagKeys=["team"])
        self.assertEqual(sm.list_tags(ResourceArn=fleet_arn)["Tags"], [{"Key": "env", "Value": "prod"}])
        self.assertEqual(sm.list_tags(ResourceArn=device["DeviceArn"])["Tags"], [{"Key": "site", "Value": "berlin"}])

        report = sm.get_device_fleet_report(DeviceFleetName="flow-fleet")
        self.assertEqual(report["DeviceStats"], {"ConnectedDeviceCount": 0, "RegisteredDeviceCount": 3})
        self.assertEqual(report["DeviceFleetArn"], fleet_arn)

        sm.update_device_fleet(DeviceFleetName="flow-fleet", OutputConfig={"S3OutputLocation": "s3://other/place"}, Description="moved")
        self.assertEqual(sm.describe_device_fleet(DeviceFleetName="flow-fleet")["Description"], "moved")

        code, status, message = error_of(lambda: sm.delete_device_fleet(DeviceFleetName="flow-fleet"))
        self.assertEqual((code, status), ("ResourceInUse", 400))
        sm.deregister_devices(DeviceFleetName="flow-fleet", DeviceNames=["flow-dev-0", "flow-dev-1", "flow-dev-2"])
        sm.delete_device_fleet(DeviceFleetName="flow-fleet")
        code, status, _ = error_of(lambda: sm.describe_device_fleet(DeviceFleetName="flow-fleet"))
        self.assertEqual((code, status), ("ResourceNotFound", 400))

    def test_paginators(self):
        sm = client()
        sm.create_device_fleet(DeviceFleetName="page-fleet", OutputConfig=OUTPUT)
        names = [f"page-dev-{i:02d}" for i in range(23)]
        sm.register_devices(DeviceFleetName="page-fleet", Devices=[{"DeviceName": n} for n in names])
        pages = list(sm.get_paginator("list_devices").paginate(DeviceFleetName="page-fleet", PaginationConfig={"PageSize": 5}))
        self.assertEqual(len(pages), 5)
        self.assertEqual([d["DeviceName"] for p in pages for d in p["DeviceSummaries"]], names)
        for i in range(12):
            sm.create_device_fleet(DeviceFleetName=f"page-more-{i:02d}", OutputConfig=OUTPUT)
        fleets = [f["DeviceFleetName"] for p in sm.get_paginator("list_device_fleets").paginate(NameContains="page-more", PaginationConfig={"PageSize": 5}) for f in p["DeviceFleetSummaries"]]
        self.assertEqual(fleets, [f"page-more-{i:02d}" for i in range(12)])
        code, _, message = error_of(lambda: sm.list_devices(NextToken="not-a-token"))
        self.assertEqual(code, "ValidationException")
        self.assertIn("NextToken", message)

    def test_documented_errors(self):
        sm = client()
        sm.create_device_fleet(DeviceFleetName="err-fleet", OutputConfig=OUTPUT)
        code, status, _ = error_of(lambda: sm.create_device_fleet(DeviceFleetName="err-fleet", OutputConfig=OUTPUT))
        self.assertEqual((code, status), ("ResourceInUse", 400))
        code, _, _ = error_of(lambda: sm.register_devices(DeviceFleetName="no-such-fleet", Devices=[{"DeviceName": "x1"}]))
        self.assertEqual(code, "ResourceNotFound")
        code, _, message = error_of(lambda: sm.create_device_fleet(DeviceFleetName="bad_name!", OutputConfig=OUTPUT))
        self.assertEqual(code, "ValidationException")
        self.assertIn("DeviceFleetName", message)
        code, _, _ = error_of(lambda: sm.describe_device(DeviceName="nobody", DeviceFleetName="err-fleet"))
        self.assertEqual(code, "ResourceNotFound")
        code, _, message = error_of(lambda: sm.create_device_fleet(DeviceFleetName="gg-fleet", OutputConfig={**OUTPUT, "PresetDeploymentType": "GreengrassV2Component"}))
        self.assertEqual(code, "ValidationException")
        self.assertIn("PresetDeploymentType", message)

    def test_tag_limit(self):
        sm = client()
        sm.create_device_fleet(DeviceFleetName="tag-fleet", OutputConfig=OUTPUT, Tags=[{"Key": f"k{i}", "Value": "v"} for i in range(30)])
        arn = sm.describe_device_fleet(DeviceFleetName="tag-fleet")["DeviceFleetArn"]
        code, _, _ = error_of(lambda: sm.add_tags(ResourceArn=arn, Tags=[{"Key": f"new{i}", "Value": "v"} for i in range(30)]))
        self.assertEqual(code, "ResourceLimitExceeded")
        self.assertEqual(len([t for p in sm.get_paginator("list_tags").paginate(ResourceArn=arn) for t in p["Tags"]]), 30)
        code, _, message = error_of(lambda: sm.list_tags(ResourceArn="arn:aws:sagemaker:eu-west-1:000000000000:endpoint/x"))
        self.assertEqual(code, "ValidationException")
        self.assertIn("ResourceArn", message)

    def test_unsupported_operation(self):
        code, status, _ = error_of(lambda: client().list_endpoints())
        self.assertEqual((code, status), ("UnknownOperationException", 400))


class Authentication(unittest.TestCase):
    def test_read_only_key_reads_but_cannot_mutate(self):
        reader = client(key="READ")
        reader.list_device_fleets()
        code, status, message = error_of(lambda: reader.create_device_fleet(DeviceFleetName="ro-fleet", OutputConfig=OUTPUT))
        self.assertEqual((code, status), ("AccessDeniedException", 400))
        self.assertIn("read-only", message)

    def test_wrong_secret_and_unknown_key(self):
        code, status, _ = error_of(lambda: client(secret="x" * 40).list_device_fleets())
        self.assertEqual((code, status), ("InvalidSignatureException", 403))
        code, status, _ = error_of(lambda: client(key_id="AKEFAAAAAAAAAAAAAAAA").list_device_fleets())
        self.assertEqual((code, status), ("UnrecognizedClientException", 403))

    def test_signature_for_another_service(self):
        credentials = Credentials(os.environ["EF_ADMIN_KEY_ID"], os.environ["EF_ADMIN_SECRET"])
        request = AWSRequest(method="POST", url=ENDPOINT + "/", data=b"{}", headers={"X-Amz-Target": "SageMaker.ListDeviceFleets", "Content-Type": "application/x-amz-json-1.1"})
        botocore.auth.SigV4Auth(credentials, "s3", REGION).add_auth(request)
        prepared = request.prepare()
        status, body = send(urllib.request.Request(prepared.url, data=b"{}", method="POST", headers=dict(prepared.headers)))
        self.assertEqual((status, body["__type"]), (403, "InvalidSignatureException"))
        self.assertIn("sagemaker", body["message"])

    def test_unsigned_request(self):
        unsigned = boto3.client("sagemaker", endpoint_url=ENDPOINT, region_name=REGION, config=Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1}))
        code, status, _ = error_of(lambda: unsigned.list_device_fleets())
        self.assertEqual((code, status), ("MissingAuthenticationTokenException", 403))

    def test_tampered_body_is_refused(self):
        credentials = Credentials(os.environ["EF_ADMIN_KEY_ID"], os.environ["EF_ADMIN_SECRET"])
        request = AWSRequest(method="POST", url=ENDPOINT + "/", data=b'{"DeviceFleetName":"a"}', headers={"X-Amz-Target": "SageMaker.DescribeDeviceFleet", "Content-Type": "application/x-amz-json-1.1"})
        botocore.auth.SigV4Auth(credentials, "sagemaker", REGION).add_auth(request)
        prepared = request.prepare()
        swapped = urllib.request.Request(prepared.url, data=b'{"DeviceFleetName":"b"}', method="POST", headers=dict(prepared.headers))
        del swapped.headers["Content-length"]
        status, body = send(swapped)
        self.assertEqual(status, 403)
        self.assertEqual(body["__type"], "InvalidSignatureException")

    def test_clock_skew_beyond_15_minutes(self):
        skewed = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(minutes=20)
        with signing_clock(skewed):
            code, status, message = error_of(lambda: client().list_device_fleets())
        self.assertEqual((code, status), ("InvalidSignatureException", 403))
        self.assertIn("expired", message)

    def test_presigned_urls(self):
        credentials = Credentials(os.environ["EF_ADMIN_KEY_ID"], os.environ["EF_ADMIN_SECRET"])

        def presigned(expires, at=None):
            request = AWSRequest(method="POST", url=ENDPOINT + "/", headers={"X-Amz-Target": "SageMaker.ListDeviceFleets", "Content-Type": "application/x-amz-json-1.1"})
            signer = botocore.auth.SigV4QueryAuth(credentials, "sagemaker", REGION, expires=expires)
            if at is None:
                signer.add_auth(request)
            else:
                with signing_clock(at):
                    signer.add_auth(request)
            prepared = request.prepare()
            self.assertNotIn("Authorization", prepared.headers)
            return urllib.request.Request(prepared.url, data=b"", method="POST", headers=dict(prepared.headers))

        status, body = send(presigned(300))
        self.assertEqual(status, 200, body)
        self.assertIn("DeviceFleetSummaries", body)
        an_hour_ago = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(hours=1)
        status, body = send(presigned(60, at=an_hour_ago))
        self.assertEqual(status, 403)
        self.assertEqual(body["__type"], "InvalidSignatureException")
        self.assertIn("expired", body["message"])


def signing_clock(at):
    """botocore's signing clock set to `at` (naive UTC): newer botocore reads get_current_datetime, older
    releases (Debian's) datetime.datetime.utcnow."""
    if hasattr(botocore.auth, "get_current_datetime"):
        return mock.patch("botocore.auth.get_current_datetime", return_value=at)
    fake = mock.MagicMock(wraps=datetime)
    fake.datetime.utcnow.return_value = at
    fake.datetime.now.return_value = at
    return mock.patch("botocore.auth.datetime", fake)


def send(request):
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


class DataPlane(unittest.TestCase):
    def test_device_key_heartbeat_and_registration(self):
        sm = client()
        sm.create_device_fleet(DeviceFleetName="edge-fleet", OutputConfig=OUTPUT)
        sm.register_devices(DeviceFleetName="edge-fleet", Devices=[{"DeviceName": "edge-dev"}, {"DeviceName": "other-dev"}])
        created = native("POST", "/api/v1/access-keys", {"name": "edge-dev agent", "scope": "read-only", "deviceName": "edge-dev"})
        edge = client("sagemaker-edge", key_id=created["accessKeyId"], secret=created["secretAccessKey"])

        registration = edge.get_device_registration(DeviceName="edge-dev", DeviceFleetName="edge-fleet")
        self.assertEqual(registration["DeviceRegistration"], "REGISTERED")
        edge.send_heartbeat(
            AgentVersion="1.0",
            DeviceName="edge-dev",
            DeviceFleetName="edge-fleet",
            Models=[{"ModelName": "resnet", "ModelVersion": "1", "LatestInference": datetime.datetime.now(datetime.timezone.utc)}],
        )
        self.assertEqual(edge.get_deployments(DeviceName="edge-dev", DeviceFleetName="edge-fleet")["Deployments"], [])
        device = sm.describe_device(DeviceName="edge-dev", DeviceFleetName="edge-fleet")
        self.assertEqual(device["AgentVersion"], "1.0")
        self.assertEqual([m["ModelName"] for m in device["Models"]], ["resnet"])
        report = sm.get_device_fleet_report(DeviceFleetName="edge-fleet")
        self.assertEqual(report["DeviceStats"], {"ConnectedDeviceCount": 1, "RegisteredDeviceCount": 2})
        self.assertEqual(report["AgentVersions"], [{"Version": "1.0", "AgentCount": 1}])

        # A device key speaks for its own device only, and only on the data plane.
        try:
            edge.send_heartbeat(AgentVersion="1.0", DeviceName="other-dev", DeviceFleetName="edge-fleet")
            raise AssertionError("expected a refusal")
        except ClientError as error:
            self.assertIn(error.response["ResponseMetadata"]["HTTPStatusCode"], (400, 403))
        device_as_operator = client(key_id=created["accessKeyId"], secret=created["secretAccessKey"])
        code, _, _ = error_of(lambda: device_as_operator.list_device_fleets())
        self.assertEqual(code, "AccessDeniedException")
        code, _, _ = error_of(lambda: client("sagemaker-edge").get_deployments(DeviceName="edge-dev", DeviceFleetName="edge-fleet"))
        self.assertEqual(code, "AccessDeniedException")

        # Deregistering ends the key's device identity, even once a device of that name is registered again.
        sm.deregister_devices(DeviceFleetName="edge-fleet", DeviceNames=["edge-dev"])
        code, _, _ = error_of(lambda: edge.get_device_registration(DeviceName="edge-dev", DeviceFleetName="edge-fleet"))
        self.assertEqual(code, "AccessDeniedException")
        sm.register_devices(DeviceFleetName="edge-fleet", Devices=[{"DeviceName": "edge-dev"}])
        code, _, message = error_of(lambda: edge.get_device_registration(DeviceName="edge-dev", DeviceFleetName="edge-fleet"))
        self.assertEqual(code, "AccessDeniedException")
        self.assertIn("no longer registered", message)
        # The data plane's reason is the key listing's (one rule, auth/access-keys.ts keyEndedReason).
        self.assertIn("(device edge-dev was deregistered and registered again after the key was issued)", message)


def wait_for(describe, status_key, done=("COMPLETED", "FAILED", "STOPPED"), attempts=300):
    """botocore has no waiters for compilation or packaging jobs: poll Describe as scripts do."""
    for _ in range(attempts):
        result = describe()
        if result[status_key] in done:
            return result
        time.sleep(0.1)
    raise AssertionError(f"still {result[status_key]}: {result}")


class HeartbeatLimits(unittest.TestCase):
    # Security audit s8, finding 2: a device key cannot flood the metrics store through SendHeartbeat.
    def test_metric_cap_body_limit_and_hourly_quota(self):
        sm = client()
        sm.create_device_fleet(DeviceFleetName="flood-fleet", OutputConfig=OUTPUT)
        sm.register_devices(DeviceFleetName="flood-fleet", Devices=[{"DeviceName": "flood-dev"}])
        created = native("POST", "/api/v1/access-keys", {"name": "flood-dev", "scope": "read-only", "deviceName": "flood-dev"})
        edge = client("sagemaker-edge", key_id=created["accessKeyId"], secret=created["secretAccessKey"])
        now = datetime.datetime.now(datetime.timezone.utc)

        def beat(count, dimension=None):
            metrics = [dict({"MetricName": "CpuUtilization", "Value": 1.0, "Timestamp": now}, **({"Dimension": dimension} if dimension else {})) for _ in range(count)]
            models = [{"ModelName": f"m{i}", "ModelVersion": "1", "ModelMetrics": metrics[i:i + 500]} for i in range(500, count, 500)]
            return lambda: edge.send_heartbeat(AgentVersion="1.0", DeviceName="flood-dev", DeviceFleetName="flood-fleet", AgentMetrics=metrics[:500], Models=models)

        code, _, message = error_of(beat(2001))
        self.assertEqual(code, "ValidationException")
        self.assertIn("expected at most 2000", message)
        code, _, message = error_of(beat(300, "d" * 900))
        self.assertEqual(code, "ValidationException")
        self.assertIn("larger than 262144 bytes", message)
        # The server runs with heartbeat.metricBytesPerDevicePerHour = 1 MiB: about ten heartbeats of 2000 metrics.
        # Past it SendHeartbeat still succeeds (review s8 #4: a refusal made agents look offline), its metrics dropped.
        for _ in range(30):
            beat(2000)()
        stored = native("GET", "/api/v1/devices/flood-dev/metrics?step=3600")
        count = sum(point["count"] for series in stored["series"] for point in series["points"])
        self.assertGreater(count, 0)
        self.assertEqual(count % 2000, 0)
        self.assertLess(count, 30 * 2000)
        # The state is still recorded.
        edge.send_heartbeat(AgentVersion="1.1", DeviceName="flood-dev", DeviceFleetName="flood-fleet", AgentMetrics=[{"MetricName": "CpuUtilization", "Value": 1.0, "Timestamp": now}])
        self.assertEqual(sm.describe_device(DeviceName="flood-dev", DeviceFleetName="flood-fleet")["AgentVersion"], "1.1")


class CompilationAndPackaging(unittest.TestCase):
    def setUp(self):
        self.s3 = boto3.client("s3", endpoint_url=os.environ["EF_S3_ENDPOINT"], region_name="us-east-1",
                               aws_access_key_id="S3RVER", aws_secret_access_key="S3RVER", config=CONFIG)
        self.bucket = os.environ["EF_S3_BUCKET"]

    def test_onnx_from_s3_to_signed_package_in_s3(self):
        sm = client()
        with open(os.environ["EF_MODEL_FILE"], "rb") as model:
            onnx = model.read()
        self.s3.put_object(Bucket=self.bucket, Key="inputs/tiny.onnx", Body=onnx)
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w:gz") as tar:
            info = tarfile.TarInfo("model/tiny.onnx")
            info.size = len(onnx)
            tar.addfile(info, io.BytesIO(onnx))
        self.s3.put_object(Bucket=self.bucket, Key="inputs/tiny.tar.gz", Body=archive.getvalue())

        role = "arn:aws:iam::123456789012:role/neo"
        for name, key in (("compile-onnx", "inputs/tiny.onnx"), ("compile-targz", "inputs/tiny.tar.gz")):
            arn = sm.create_compilation_job(
                CompilationJobName=name, RoleArn=role,
                InputConfig={"S3Uri": f"s3://{self.bucket}/{key}", "Framework": "ONNX", "DataInputConfig": DATA_INPUT_CONFIG},
                OutputConfig={"S3OutputLocation": f"s3://{self.bucket}/compiled", "TargetDevice": "jetson_nano"},
                StoppingCondition={"MaxRuntimeInSeconds": 900},
            )["CompilationJobArn"]
            self.assertEqual(arn, f"arn:aws:sagemaker:{REGION}:000000000000:compilation-job/{name}")
            job = wait_for(lambda: sm.describe_compilation_job(CompilationJobName=name), "CompilationJobStatus")
            self.assertEqual(job["CompilationJobStatus"], "COMPLETED", job)
        listed = sm.list_compilation_jobs(NameContains="compile-")["CompilationJobSummaries"]
        self.assertEqual([j["CompilationJobName"] for j in listed], ["compile-onnx", "compile-targz"])

        code, _, message = error_of(lambda: sm.create_compilation_job(
            CompilationJobName="compile-tf", RoleArn=role,
            InputConfig={"S3Uri": f"s3://{self.bucket}/inputs/model.tar.gz", "Framework": "TENSORFLOW", "DataInputConfig": DATA_INPUT_CONFIG},
            OutputConfig={"S3OutputLocation": f"s3://{self.bucket}/compiled"}, StoppingCondition={}))
        self.assertEqual(code, "ValidationException")
        self.assertIn("ONNX", message)
        sm.create_compilation_job(
            CompilationJobName="compile-missing", RoleArn=role,
            InputConfig={"S3Uri": f"s3://{self.bucket}/inputs/none.onnx", "Framework": "ONNX", "DataInputConfig": DATA_INPUT_CONFIG},
            OutputConfig={"S3OutputLocation": f"s3://{self.bucket}/compiled"}, StoppingCondition={})
        failed = wait_for(lambda: sm.describe_compilation_job(CompilationJobName="compile-missing"), "CompilationJobStatus")
        self.assertEqual(failed["CompilationJobStatus"], "FAILED")
        self.assertIn("none.onnx", failed["FailureReason"])
        code, _, _ = error_of(lambda: sm.stop_compilation_job(CompilationJobName="compile-missing"))
        self.assertEqual(code, "ResourceInUse")

        code, _, _ = error_of(lambda: sm.create_edge_packaging_job(
            EdgePackagingJobName="pack-bad", CompilationJobName="compile-missing", ModelName="tiny", ModelVersion="1.0",
            RoleArn=role, OutputConfig={"S3OutputLocation": f"s3://{self.bucket}/packages"}))
        self.assertEqual(code, "ValidationException")
        sm.create_edge_packaging_job(
            EdgePackagingJobName="pack-tiny", CompilationJobName="compile-targz", ModelName="tiny", ModelVersion="1.0",
            RoleArn=role, OutputConfig={"S3OutputLocation": f"s3://{self.bucket}/packages"})
        job = wait_for(lambda: sm.describe_edge_packaging_job(EdgePackagingJobName="pack-tiny"), "EdgePackagingJobStatus")
        self.assertEqual(job["EdgePackagingJobStatus"], "COMPLETED", job)
        self.assertEqual(job["CompilationJobName"], "compile-targz")
        self.assertEqual(job["ModelArtifact"], f"s3://{self.bucket}/packages/tiny-1.0.tar.gz")
        self.assertTrue(job["ModelSignature"])
        summaries = sm.list_edge_packaging_jobs(ModelNameContains="tin")["EdgePackagingJobSummaries"]
        self.assertEqual([(j["EdgePackagingJobName"], j["EdgePackagingJobStatus"]) for j in summaries], [("pack-tiny", "COMPLETED")])
        for arn in (f"arn:aws:sagemaker:{REGION}:000000000000:compilation-job/compile-targz", job["EdgePackagingJobArn"]):
            sm.add_tags(ResourceArn=arn, Tags=[{"Key": "stage", "Value": "test"}])
            self.assertEqual(sm.list_tags(ResourceArn=arn)["Tags"], [{"Key": "stage", "Value": "test"}])
            sm.delete_tags(ResourceArn=arn, TagKeys=["stage"])
            self.assertEqual(sm.list_tags(ResourceArn=arn)["Tags"], [])
        body = self.s3.get_object(Bucket=self.bucket, Key="packages/tiny-1.0.tar.gz")["Body"].read()
        with open(os.path.join(os.environ["EF_WORK_DIR"], "tiny-1.0.tar.gz"), "wb") as out:
            out.write(body)
        code, _, _ = error_of(lambda: sm.create_edge_packaging_job(
            EdgePackagingJobName="pack-tiny", CompilationJobName="compile-onnx", ModelName="tiny", ModelVersion="2.0",
            RoleArn=role, OutputConfig={"S3OutputLocation": f"s3://{self.bucket}/packages"}))
        self.assertEqual(code, "ResourceInUse")


    def test_data_input_config_optional(self):
        with open(os.environ["EF_MODEL_FILE"], "rb") as model:
            self.s3.put_object(Bucket=self.bucket, Key="inputs/no-data-config.onnx", Body=model.read())
        request = {"CompilationJobName": "no-data-config-job", "RoleArn": "arn:aws:iam::123456789012:role/neo",
                   "InputConfig": {"S3Uri": f"s3://{self.bucket}/inputs/no-data-config.onnx", "Framework": "ONNX"},
                   "OutputConfig": {"S3OutputLocation": f"s3://{self.bucket}/compiled"}, "StoppingCondition": {}}
        status, body = signed_raw("/", json.dumps(request).encode(), "SageMaker.CreateCompilationJob")
        self.assertEqual(status, 200, body)
        job = wait_for(lambda: client().describe_compilation_job(CompilationJobName="no-data-config-job"),
                       "CompilationJobStatus")
        self.assertEqual(job["CompilationJobStatus"], "COMPLETED", job)


    def test_paging_echo_version_collision_and_blocked_fleet_delete(self):
        sm = client()
        role = "arn:aws:iam::123456789012:role/neo"
        with open(os.environ["EF_MODEL_FILE"], "rb") as model:
            self.s3.put_object(Bucket=self.bucket, Key="inputs/paged.onnx", Body=model.read())

        def compile_job(name):
            sm.create_compilation_job(
                CompilationJobName=name, RoleArn=role,
                InputConfig={"S3Uri": f"s3://{self.bucket}/inputs/paged.onnx", "Framework": "ONNX", "DataInputConfig": DATA_INPUT_CONFIG},
                OutputConfig={"S3OutputLocation": f"s3://{self.bucket}/compiled", "TargetDevice": "jetson_nano"},
                StoppingCondition={"MaxRuntimeInSeconds": 900})
            return wait_for(lambda: sm.describe_compilation_job(CompilationJobName=name), "CompilationJobStatus")

        # F-compile-page: eleven names before the match, more than a default page: the paginator still finds it.
        for i in range(11):
            compile_job(f"pg-aa-{i:02d}")
        matched = compile_job("pg-zz-match")
        found = [j["CompilationJobName"] for page in sm.get_paginator("list_compilation_jobs").paginate(NameContains="match")
                 for j in page["CompilationJobSummaries"]]
        self.assertEqual(found, ["pg-zz-match"])
        self.assertEqual(len([j for page in sm.get_paginator("list_compilation_jobs").paginate(
            NameContains="pg-", PaginationConfig={"PageSize": 5}) for j in page["CompilationJobSummaries"]]), 12)
        # F-compile-echo: what was sent comes back; a failed job has no artifact.
        self.assertEqual(matched["StoppingCondition"], {"MaxRuntimeInSeconds": 900})
        self.assertEqual(matched["InputConfig"]["DataInputConfig"], DATA_INPUT_CONFIG)
        self.assertEqual(matched["ModelArtifacts"], {"S3ModelArtifacts": f"s3://{self.bucket}/inputs/paged.onnx"})
        sm.create_compilation_job(
            CompilationJobName="pg-missing", RoleArn=role,
            InputConfig={"S3Uri": f"s3://{self.bucket}/inputs/none.onnx", "Framework": "ONNX", "DataInputConfig": DATA_INPUT_CONFIG},
            OutputConfig={"S3OutputLocation": f"s3://{self.bucket}/compiled"}, StoppingCondition={})
        failed = wait_for(lambda: sm.describe_compilation_job(CompilationJobName="pg-missing"), "CompilationJobStatus")
        self.assertEqual(failed["CompilationJobStatus"], "FAILED")
        self.assertNotIn("ModelArtifacts", failed)

        # F-artifact-collision: "v1 beta" is written as detector-v1_beta.tar.gz; "v1_beta" would overwrite it.
        out = {"S3OutputLocation": f"s3://{self.bucket}/collide"}
        sm.create_edge_packaging_job(EdgePackagingJobName="pv-v1-beta", CompilationJobName="pg-zz-match",
                                     ModelName="collider", ModelVersion="v1 beta", RoleArn=role, OutputConfig=out)
        packaged = wait_for(lambda: sm.describe_edge_packaging_job(EdgePackagingJobName="pv-v1-beta"), "EdgePackagingJobStatus")
        self.assertEqual(packaged["ModelArtifact"], f"s3://{self.bucket}/collide/collider-v1_beta.tar.gz")
        code, _, message = error_of(lambda: sm.create_edge_packaging_job(
            EdgePackagingJobName="pv-other", CompilationJobName="pg-aa-00", ModelName="collider", ModelVersion="v1_beta",
            RoleArn=role, OutputConfig=out))
        self.assertEqual(code, "ValidationException")
        self.assertIn("'ModelVersion'", message)
        self.assertIn("edge packaging job pv-v1-beta's, of ModelVersion 'v1 beta'", message)
        code, _, _ = error_of(lambda: sm.describe_edge_packaging_job(EdgePackagingJobName="pv-other"))
        self.assertEqual(code, "ResourceNotFound")
        # Elsewhere, the object is its own.
        sm.create_edge_packaging_job(EdgePackagingJobName="pv-other", CompilationJobName="pg-aa-00", ModelName="collider",
                                     ModelVersion="v1_beta", RoleArn=role, OutputConfig={"S3OutputLocation": f"s3://{self.bucket}/other"})

        # F-tags-msg: a job that does not exist is said not to exist.
        code, _, message = error_of(lambda: sm.list_tags(ResourceArn=f"arn:aws:sagemaker:{REGION}:000000000000:edge-packaging-job/nosuch"))
        self.assertEqual((code, message), ("ResourceNotFound", "edge packaging job nosuch does not exist"))

        # F-fleet-delete-msg: a fleet kept by a plan names the plan, not devices.
        sm.create_device_fleet(DeviceFleetName="planned-fleet", OutputConfig=OUTPUT)
        sm.create_edge_deployment_plan(EdgeDeploymentPlanName="keeps-fleet", DeviceFleetName="planned-fleet",
                                       ModelConfigs=[{"ModelHandle": "h", "EdgePackagingJobName": "pv-v1-beta"}])
        code, _, message = error_of(lambda: sm.delete_device_fleet(DeviceFleetName="planned-fleet"))
        self.assertEqual((code, message), ("ResourceInUse", "fleet planned-fleet has deployment plan(s) keeps-fleet; delete them first"))
        sm.delete_edge_deployment_plan(EdgeDeploymentPlanName="keeps-fleet")
        sm.delete_device_fleet(DeviceFleetName="planned-fleet")

DOC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "..", "docs", "sagemaker-compatibility.md")


class DocumentedExample(unittest.TestCase):
    def test_using_it_python_block_runs_as_printed(self):
        """docs/sagemaker-compatibility.md "Using it": the boto3 block, only its endpoint and bucket changed."""
        with open(DOC, encoding="utf8") as doc:
            text = doc.read()
        section = text[text.index("## Using it"):text.index("## Signatures")]
        blocks = section.split("```python\n")[1:]
        self.assertEqual(len(blocks), 1, "expected one python block in Using it")
        code = blocks[0].split("```")[0]
        bucket = os.environ["EF_S3_BUCKET"]
        s3 = boto3.client("s3", endpoint_url=os.environ["EF_S3_ENDPOINT"], region_name="us-east-1",
                          aws_access_key_id="S3RVER", aws_secret_access_key="S3RVER", config=CONFIG)
        with open(os.environ["EF_MODEL_FILE"], "rb") as model:
            s3.put_object(Bucket=bucket, Key="detector/model.onnx", Body=model.read())
        code = code.replace("http://edgefleet.example:8080", ENDPOINT).replace("s3://models/", f"s3://{bucket}/")
        printed = io.StringIO()
        # The script's boto3 finds its key as a reader of the docs would have it (their AWS_PROFILE=ci).
        keys = {"AWS_ACCESS_KEY_ID": os.environ["EF_ADMIN_KEY_ID"], "AWS_SECRET_ACCESS_KEY": os.environ["EF_ADMIN_SECRET"],
                "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
        with mock.patch.dict(os.environ, keys), mock.patch("sys.stdout", printed):
            exec(compile(code, DOC, "exec"), {"__name__": "documented_example"})
        lines = printed.getvalue().splitlines()
        self.assertEqual(lines, [f"s3://{bucket}/packaged/detector-2.0.tar.gz", "[('cam-01', 'READYTODEPLOY')]",
                                 "['cam-01', 'cam-02']"])

def wait_for_file(path, timeout_s=120):
    """The Vitest side's half of the handshake: it writes `path` once it has done its part."""
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise AssertionError(f"the test runner did not write {path}")
        time.sleep(0.1)


class EdgeManagerFlow(unittest.TestCase):
    """Edge Manager's whole flow, as a boto3 script runs it, with a real enrolled agent (started by the Vitest
    side once the devices are registered) receiving the model."""

    def test_fleet_to_deployed_model(self):
        sm = client()
        s3 = boto3.client("s3", endpoint_url=os.environ["EF_S3_ENDPOINT"], region_name="us-east-1",
                          aws_access_key_id="S3RVER", aws_secret_access_key="S3RVER", config=CONFIG)
        bucket = os.environ["EF_S3_BUCKET"]
        work = os.environ["EF_WORK_DIR"]
        role = "arn:aws:iam::123456789012:role/edge"

        # Fleet and devices; the Vitest side then enrolls em-cam-1 and starts a real agent for it.
        sm.create_device_fleet(DeviceFleetName="em-fleet", OutputConfig=OUTPUT, RoleArn=role)
        sm.register_devices(DeviceFleetName="em-fleet", Devices=[{"DeviceName": f"em-cam-{i}"} for i in range(1, 5)])
        with open(os.path.join(work, "devices-registered"), "w") as marker:
            marker.write("em-cam-1\n")

        # Compilation (ONNX from S3) and packaging (signed, written to S3).
        with open(os.environ["EF_MODEL_FILE"], "rb") as model:
            s3.put_object(Bucket=bucket, Key="inputs/flow.onnx", Body=model.read())
        sm.create_compilation_job(
            CompilationJobName="em-compile", RoleArn=role,
            InputConfig={"S3Uri": f"s3://{bucket}/inputs/flow.onnx", "Framework": "ONNX", "DataInputConfig": DATA_INPUT_CONFIG},
            OutputConfig={"S3OutputLocation": f"s3://{bucket}/compiled", "TargetDevice": "jetson_nano"},
            StoppingCondition={"MaxRuntimeInSeconds": 900})
        compiled = wait_for(lambda: sm.describe_compilation_job(CompilationJobName="em-compile"), "CompilationJobStatus")
        self.assertEqual(compiled["CompilationJobStatus"], "COMPLETED", compiled)
        sm.create_edge_packaging_job(
            EdgePackagingJobName="em-pack", CompilationJobName="em-compile", ModelName="detector", ModelVersion="1.0",
            RoleArn=role, OutputConfig={"S3OutputLocation": f"s3://{bucket}/em-packages"})
        packaged = wait_for(lambda: sm.describe_edge_packaging_job(EdgePackagingJobName="em-pack"), "EdgePackagingJobStatus")
        self.assertEqual(packaged["EdgePackagingJobStatus"], "COMPLETED", packaged)

        # A plan with two stages: a canary (the enrolled agent), then the rest (a device that never connects).
        arn = sm.create_edge_deployment_plan(
            EdgeDeploymentPlanName="em-plan",
            ModelConfigs=[{"ModelHandle": "detector", "EdgePackagingJobName": "em-pack"}],
            DeviceFleetName="em-fleet",
            Stages=[{"StageName": "canary",
                     "DeviceSelectionConfig": {"DeviceSubsetType": "SELECTION", "DeviceNames": ["em-cam-1"]},
                     "DeploymentConfig": {"FailureHandlingPolicy": "ROLLBACK_ON_FAILURE"}}],
            Tags=[{"Key": "team", "Value": "vision"}],
        )["EdgeDeploymentPlanArn"]
        self.assertEqual(arn, f"arn:aws:sagemaker:{REGION}:000000000000:edge-deployment/em-plan")
        sm.create_edge_deployment_stage(EdgeDeploymentPlanName="em-plan", Stages=[
            {"StageName": "rest", "DeviceSelectionConfig": {"DeviceSubsetType": "NAMECONTAINS", "DeviceNameContains": "CAM"}}])
        plan = sm.describe_edge_deployment_plan(EdgeDeploymentPlanName="em-plan")
        self.assertEqual(plan["EdgeDeploymentPlanArn"], arn)
        self.assertEqual(plan["DeviceFleetName"], "em-fleet")
        self.assertEqual(plan["ModelConfigs"], [{"ModelHandle": "detector", "EdgePackagingJobName": "em-pack"}])
        self.assertEqual([(s["StageName"], s["DeploymentStatus"]["StageStatus"]) for s in plan["Stages"]],
                         [("canary", "READYTODEPLOY"), ("rest", "READYTODEPLOY")])
        self.assertEqual(plan["Stages"][1]["DeviceSelectionConfig"], {"DeviceSubsetType": "NAMECONTAINS", "DeviceNameContains": "CAM"})
        self.assertEqual(plan["Stages"][1]["DeploymentConfig"], {"FailureHandlingPolicy": "ROLLBACK_ON_FAILURE"})
        self.assertIsInstance(plan["CreationTime"], datetime.datetime)
        first = sm.describe_edge_deployment_plan(EdgeDeploymentPlanName="em-plan", MaxResults=1)
        second = sm.describe_edge_deployment_plan(EdgeDeploymentPlanName="em-plan", MaxResults=1, NextToken=first["NextToken"])
        self.assertEqual([s["StageName"] for s in first["Stages"] + second["Stages"]], ["canary", "rest"])
        self.assertNotIn("NextToken", second)
        self.assertEqual(sm.list_tags(ResourceArn=arn)["Tags"], [{"Key": "team", "Value": "vision"}])
        sm.add_tags(ResourceArn=arn, Tags=[{"Key": "env", "Value": "prod"}])
        sm.delete_tags(ResourceArn=arn, TagKeys=["team"])
        self.assertEqual(sm.list_tags(ResourceArn=arn)["Tags"], [{"Key": "env", "Value": "prod"}])
        summaries = sm.list_edge_deployment_plans(DeviceFleetNameContains="em-")["EdgeDeploymentPlanSummaries"]
        self.assertEqual([(p["EdgeDeploymentPlanName"], p["DeviceFleetName"]) for p in summaries], [("em-plan", "em-fleet")])
        for i in range(3):
            sm.create_edge_deployment_plan(EdgeDeploymentPlanName=f"em-page-{i}", DeviceFleetName="em-fleet",
                                           ModelConfigs=[{"ModelHandle": f"page-{i}", "EdgePackagingJobName": "em-pack"}])
        pages = list(sm.get_paginator("list_edge_deployment_plans").paginate(NameContains="EM-", PaginationConfig={"PageSize": 2}))
        self.assertEqual([p["EdgeDeploymentPlanName"] for page in pages for p in page["EdgeDeploymentPlanSummaries"]],
                         ["em-page-0", "em-page-1", "em-page-2", "em-plan"])
        for i in range(3):
            sm.delete_edge_deployment_plan(EdgeDeploymentPlanName=f"em-page-{i}")
        code, _, _ = error_of(lambda: sm.create_edge_deployment_plan(
            EdgeDeploymentPlanName="em-plan", ModelConfigs=[{"ModelHandle": "other", "EdgePackagingJobName": "em-pack"}],
            DeviceFleetName="em-fleet"))
        self.assertEqual(code, "ResourceInUse")
        code, _, _ = error_of(lambda: sm.create_edge_deployment_plan(
            EdgeDeploymentPlanName="em-plan-2", ModelConfigs=[{"ModelHandle": "detector", "EdgePackagingJobName": "em-pack"}],
            DeviceFleetName="no-such-fleet"))
        self.assertEqual(code, "ResourceNotFound")

        # The canary: the real agent picks the model up and reports it; the stage and the device are DEPLOYED.
        wait_for_file(os.path.join(work, "agent-running"))
        sm.start_edge_deployment_stage(EdgeDeploymentPlanName="em-plan", StageName="canary")
        code, _, _ = error_of(lambda: sm.delete_edge_deployment_stage(EdgeDeploymentPlanName="em-plan", StageName="canary"))
        self.assertEqual(code, "ResourceInUse")
        devices = []
        for _ in range(900):
            devices = sm.list_stage_devices(EdgeDeploymentPlanName="em-plan", StageName="canary")["DeviceDeploymentSummaries"]
            if devices and devices[0]["DeviceDeploymentStatus"] in ("DEPLOYED", "FAILED"):
                break
            time.sleep(0.2)
        self.assertEqual(len(devices), 1, devices)
        device = devices[0]
        self.assertEqual(device["DeviceDeploymentStatus"], "DEPLOYED", device)
        self.assertEqual((device["DeviceName"], device["StageName"], device["DeployedStageName"], device["DeviceFleetName"]),
                         ("em-cam-1", "canary", "canary", "em-fleet"))
        self.assertEqual(device["EdgeDeploymentPlanArn"], arn)
        self.assertEqual(device["DeviceArn"], f"arn:aws:sagemaker:{REGION}:000000000000:device-fleet/em-fleet/device/em-cam-1")
        self.assertIsInstance(device["DeploymentStartTime"], datetime.datetime)
        plan = sm.describe_edge_deployment_plan(EdgeDeploymentPlanName="em-plan")
        self.assertEqual((plan["EdgeDeploymentSuccess"], plan["EdgeDeploymentPending"], plan["EdgeDeploymentFailed"]), (1, 0, 0))
        canary = plan["Stages"][0]["DeploymentStatus"]
        self.assertEqual((canary["StageStatus"], canary["EdgeDeploymentSuccessInStage"]), ("DEPLOYED", 1))
        self.assertIsInstance(canary["EdgeDeploymentStageStartTime"], datetime.datetime)

        # The device's view through the data plane: the same deployment, with Edge Manager's S3Url.
        created = native("POST", "/api/v1/access-keys", {"name": "em-cam-1 script", "scope": "read-only", "deviceName": "em-cam-1"})
        edge = client("sagemaker-edge", key_id=created["accessKeyId"], secret=created["secretAccessKey"])
        deployments = edge.get_deployments(DeviceName="em-cam-1", DeviceFleetName="em-fleet")["Deployments"]
        self.assertEqual([(d["DeploymentName"], d["Type"], d["FailureHandlingPolicy"]) for d in deployments],
                         [("em-plan", "Model", "ROLLBACK_ON_FAILURE")])
        definition = deployments[0]["Definitions"][0]
        self.assertEqual((definition["ModelHandle"], definition["State"]), ("detector", "DEPLOY"))
        self.assertEqual(definition["S3Url"], f"s3://{bucket}/em-packages/detector-1.0.tar.gz")

        # The fleet report counts the connected agent and the model it runs.
        for _ in range(300):
            report = sm.get_device_fleet_report(DeviceFleetName="em-fleet")
            if any(m["ModelName"] == "detector" for m in report.get("ModelStats", [])):
                break
            time.sleep(0.2)
        self.assertEqual(report["DeviceStats"], {"ConnectedDeviceCount": 1, "RegisteredDeviceCount": 4})
        self.assertIn(("detector", "1.0"), [(m["ModelName"], m["ModelVersion"]) for m in report["ModelStats"]])

        # The second stage: the devices the canary did not take (name contains "CAM", case-insensitively); they
        # never connect, so they stay READYTODEPLOY until the stage is stopped.
        sm.start_edge_deployment_stage(EdgeDeploymentPlanName="em-plan", StageName="rest")
        pages = list(sm.get_paginator("list_stage_devices").paginate(
            EdgeDeploymentPlanName="em-plan", StageName="rest", PaginationConfig={"PageSize": 2}))
        self.assertEqual(len(pages), 2)
        rest = [d for page in pages for d in page["DeviceDeploymentSummaries"]]
        self.assertEqual([(d["DeviceName"], d["DeviceDeploymentStatus"]) for d in rest],
                         [(f"em-cam-{i}", "READYTODEPLOY") for i in range(2, 5)])
        sm.stop_edge_deployment_stage(EdgeDeploymentPlanName="em-plan", StageName="rest")
        stopped = sm.describe_edge_deployment_plan(EdgeDeploymentPlanName="em-plan")["Stages"][1]["DeploymentStatus"]
        self.assertIn(stopped["StageStatus"], ("STOPPING", "STOPPED"))

        # A stage that never started can be deleted; a plan can be deleted.
        sm.create_edge_deployment_stage(EdgeDeploymentPlanName="em-plan", Stages=[
            {"StageName": "later", "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 100}}])
        sm.delete_edge_deployment_stage(EdgeDeploymentPlanName="em-plan", StageName="later")
        self.assertEqual([s["StageName"] for s in sm.describe_edge_deployment_plan(EdgeDeploymentPlanName="em-plan")["Stages"]],
                         ["canary", "rest"])
        sm.delete_edge_deployment_plan(EdgeDeploymentPlanName="em-plan")
        code, _, _ = error_of(lambda: sm.describe_edge_deployment_plan(EdgeDeploymentPlanName="em-plan"))
        self.assertEqual(code, "ResourceNotFound")


class DeploymentPlanErrors(unittest.TestCase):
    def test_documented_errors(self):
        sm = client()
        sm.create_device_fleet(DeviceFleetName="dp-err-fleet", OutputConfig=OUTPUT)
        code, _, message = error_of(lambda: sm.create_edge_deployment_plan(
            EdgeDeploymentPlanName="dp-err", ModelConfigs=[{"ModelHandle": "m", "EdgePackagingJobName": "no-such-job"}],
            DeviceFleetName="dp-err-fleet"))
        self.assertEqual(code, "ResourceNotFound")
        self.assertIn("no-such-job", message)
        code, _, message = error_of(lambda: sm.create_edge_deployment_plan(
            EdgeDeploymentPlanName="bad_name!", ModelConfigs=[{"ModelHandle": "m", "EdgePackagingJobName": "j"}],
            DeviceFleetName="dp-err-fleet"))
        self.assertEqual(code, "ValidationException")
        self.assertIn("EdgeDeploymentPlanName", message)
        code, _, message = error_of(lambda: sm.create_edge_deployment_plan(
            EdgeDeploymentPlanName="dp-err", ModelConfigs=[], DeviceFleetName="dp-err-fleet"))
        self.assertEqual(code, "ValidationException")
        self.assertIn("ModelConfigs", message)
        code, _, message = error_of(lambda: sm.create_edge_deployment_plan(
            EdgeDeploymentPlanName="dp-err", ModelConfigs=[{"ModelHandle": "m", "EdgePackagingJobName": "j"}],
            DeviceFleetName="dp-err-fleet",
            Stages=[{"StageName": "s", "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 101}}]))
        self.assertEqual(code, "ValidationException")
        self.assertIn("Percentage", message)
        # F-stage-msg: a rule across members, said in one line naming the AWS member.
        code, _, message = error_of(lambda: sm.create_edge_deployment_plan(
            EdgeDeploymentPlanName="dp-err", ModelConfigs=[{"ModelHandle": "m", "EdgePackagingJobName": "j"}],
            DeviceFleetName="dp-err-fleet",
            Stages=[{"StageName": "s", "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE"}}]))
        self.assertEqual((code, message), ("ValidationException",
                                           "1 validation error detected: Value at 'Stages.0.DeviceSelectionConfig.Percentage' "
                                           "failed to satisfy constraint: required when DeviceSubsetType is PERCENTAGE"))
        # A SELECTION stage names at most 1000 devices, refused in the facade's own terms.
        code, _, message = error_of(lambda: sm.create_edge_deployment_plan(
            EdgeDeploymentPlanName="dp-err", ModelConfigs=[{"ModelHandle": "m", "EdgePackagingJobName": "j"}],
            DeviceFleetName="dp-err-fleet",
            Stages=[{"StageName": "s", "DeviceSelectionConfig": {
                "DeviceSubsetType": "SELECTION", "DeviceNames": [f"d{i}" for i in range(1001)]}}]))
        self.assertEqual(code, "ValidationException")
        self.assertIn("DeviceNames", message)
        self.assertIn("1000", message)
        for call in (lambda: sm.describe_edge_deployment_plan(EdgeDeploymentPlanName="nope"),
                     lambda: sm.start_edge_deployment_stage(EdgeDeploymentPlanName="nope", StageName="s"),
                     lambda: sm.stop_edge_deployment_stage(EdgeDeploymentPlanName="nope", StageName="s"),
                     lambda: sm.delete_edge_deployment_plan(EdgeDeploymentPlanName="nope"),
                     lambda: sm.delete_edge_deployment_stage(EdgeDeploymentPlanName="nope", StageName="s"),
                     lambda: sm.list_stage_devices(EdgeDeploymentPlanName="nope", StageName="s"),
                     lambda: sm.create_edge_deployment_stage(EdgeDeploymentPlanName="nope", Stages=[
                         {"StageName": "s", "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 5}}])):
            code, status, _ = error_of(call)
            self.assertEqual((code, status), ("ResourceNotFound", 400))
        code, _, message = error_of(lambda: sm.describe_edge_deployment_plan(EdgeDeploymentPlanName="nope", MaxResults=11))
        self.assertEqual(code, "ValidationException")
        self.assertIn("MaxResults", message)
        code, _, message = error_of(lambda: sm.list_edge_deployment_plans(SortBy="CREATION_TIME"))
        self.assertEqual(code, "ValidationException")
        self.assertIn("SortBy", message)
        code, _, message = error_of(lambda: sm.list_edge_deployment_plans(NextToken="not-a-token"))
        self.assertEqual(code, "ValidationException")
        self.assertIn("NextToken", message)
        code, _, _ = error_of(lambda: sm.list_tags(ResourceArn=f"arn:aws:sagemaker:{REGION}:000000000000:edge-deployment/nope"))
        self.assertEqual(code, "ResourceNotFound")

    def test_read_only_key(self):
        reader = client(key="READ")
        self.assertIn("EdgeDeploymentPlanSummaries", reader.list_edge_deployment_plans())
        stage = {"EdgeDeploymentPlanName": "ro-plan", "StageName": "s"}
        for call in (lambda: reader.create_edge_deployment_plan(
                         EdgeDeploymentPlanName="ro-plan", ModelConfigs=[{"ModelHandle": "m", "EdgePackagingJobName": "j"}],
                         DeviceFleetName="f"),
                     lambda: reader.create_edge_deployment_stage(EdgeDeploymentPlanName="ro-plan", Stages=[
                         {"StageName": "s", "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 5}}]),
                     lambda: reader.start_edge_deployment_stage(**stage),
                     lambda: reader.stop_edge_deployment_stage(**stage),
                     lambda: reader.delete_edge_deployment_stage(**stage),
                     lambda: reader.delete_edge_deployment_plan(EdgeDeploymentPlanName="ro-plan")):
            code, status, message = error_of(call)
            self.assertEqual((code, status), ("AccessDeniedException", 400))
            self.assertIn("read-only", message)


SUPPORTED = [
    "CreateDeviceFleet", "DescribeDeviceFleet", "UpdateDeviceFleet", "DeleteDeviceFleet", "ListDeviceFleets",
    "GetDeviceFleetReport", "RegisterDevices", "UpdateDevices", "DeregisterDevices", "DescribeDevice",
    "ListDevices", "AddTags", "ListTags", "DeleteTags", "CreateCompilationJob", "DescribeCompilationJob",
    "ListCompilationJobs", "StopCompilationJob", "CreateEdgePackagingJob", "DescribeEdgePackagingJob",
    "ListEdgePackagingJobs", "CreateEdgeDeploymentPlan", "CreateEdgeDeploymentStage", "StartEdgeDeploymentStage",
    "StopEdgeDeploymentStage", "DescribeEdgeDeploymentPlan", "ListEdgeDeploymentPlans", "DeleteEdgeDeploymentPlan",
    "DeleteEdgeDeploymentStage", "ListStageDevices",
]
EDGE = ["SendHeartbeat", "GetDeviceRegistration", "GetDeployments"]
# What a malformed request may be answered with: a clear client error, never a 5xx.
CLIENT_ERRORS = {"ValidationException", "SerializationException", "ResourceNotFound", "ResourceInUse"}


def wrong_value(shape):
    """A value of the wrong JSON type for a botocore shape."""
    return {"string": 12345, "integer": "twelve", "long": "twelve", "boolean": "yes", "double": "x",
            "timestamp": "yesterday", "list": "not-a-list", "structure": ["not", "an", "object"],
            "map": 7}.get(shape.type_name, None)


def signed_raw(path, body, target=None):
    credentials = Credentials(os.environ["EF_ADMIN_KEY_ID"], os.environ["EF_ADMIN_SECRET"])
    headers = {"Content-Type": "application/x-amz-json-1.1" if target else "application/json"}
    if target:
        headers["X-Amz-Target"] = target
    request = AWSRequest(method="POST", url=ENDPOINT + path, data=body, headers=headers)
    botocore.auth.SigV4Auth(credentials, "sagemaker", REGION).add_auth(request)
    prepared = request.prepare()
    return send(urllib.request.Request(prepared.url, data=body, method="POST", headers=dict(prepared.headers)))


class NativeStricterThanAws(unittest.TestCase):
    """Where the native API refuses an operator's mistake, the facade keeps or follows AWS (sagemaker-compatibility.md)."""

    def test_list_devices_of_a_fleet_that_does_not_exist_is_empty(self):
        # AWS documents DeviceFleetName as a filter, with no ResourceNotFound: an empty list (native: 404).
        self.assertEqual(client().list_devices(DeviceFleetName="no-such-fleet")["DeviceSummaries"], [])

    def test_selection_naming_devices_outside_the_fleet_is_refused(self):
        sm = client()
        sm.create_device_fleet(DeviceFleetName="sel-fleet", OutputConfig=OUTPUT)
        sm.register_devices(DeviceFleetName="sel-fleet", Devices=[{"DeviceName": "sel-1"}])
        # A plan with no stages (its UNDEPLOY config needs no packaging job), then a stage naming a typo.
        native("POST", "/api/v1/deployment-plans", {
            "name": "sel-plan", "fleetName": "sel-fleet", "modelConfigs": [{"modelHandle": "sel-h", "state": "UNDEPLOY"}]})
        code, _, message = error_of(lambda: sm.create_edge_deployment_stage(EdgeDeploymentPlanName="sel-plan", Stages=[
            {"StageName": "s", "DeviceSelectionConfig": {"DeviceSubsetType": "SELECTION", "DeviceNames": ["sel-l"]}}]))
        self.assertEqual(code, "ValidationException")
        self.assertIn("sel-l", message)
        self.assertIn("sel-fleet", message)

    def test_start_stage_after_a_failed_stage_is_accepted(self):
        # AWS starts it; the native API would refuse without force.
        sm = client()
        sm.create_device_fleet(DeviceFleetName="after-fail-fleet", OutputConfig=OUTPUT)
        sm.register_devices(DeviceFleetName="after-fail-fleet", Devices=[{"DeviceName": "af-1"}, {"DeviceName": "af-2"}])
        native("POST", "/api/v1/deployment-plans", {
            "name": "after-fail", "fleetName": "after-fail-fleet",
            "modelConfigs": [{"modelHandle": "af-h", "state": "UNDEPLOY"}],
            "stages": [{"name": "canary", "deviceSelection": {"subsetType": "SELECTION", "deviceNames": ["af-1"]}},
                       {"name": "rest", "deviceSelection": {"subsetType": "SELECTION", "deviceNames": ["af-2"]}}],
            "options": {"maxRetries": 0}})
        sm.start_edge_deployment_stage(EdgeDeploymentPlanName="after-fail", StageName="canary")
        key = native("POST", "/api/v1/access-keys", {"name": "af-1 agent", "scope": "read-only", "deviceName": "af-1"})
        edge = client("sagemaker-edge", key_id=key["accessKeyId"], secret=key["secretAccessKey"])
        edge.get_deployments(DeviceName="af-1", DeviceFleetName="after-fail-fleet")
        edge.send_heartbeat(AgentVersion="1.0", DeviceName="af-1", DeviceFleetName="after-fail-fleet", DeploymentResult={
            "DeploymentName": "after-fail", "DeploymentStatus": "FAIL",
            "DeploymentModels": [{"ModelHandle": "af-h", "Status": "FAIL", "StatusReason": "could not remove it"}]})
        plan = sm.describe_edge_deployment_plan(EdgeDeploymentPlanName="after-fail")
        self.assertEqual([s["DeploymentStatus"]["StageStatus"] for s in plan["Stages"]], ["FAILED", "READYTODEPLOY"])
        sm.start_edge_deployment_stage(EdgeDeploymentPlanName="after-fail", StageName="rest")
        plan = sm.describe_edge_deployment_plan(EdgeDeploymentPlanName="after-fail")
        self.assertEqual(plan["Stages"][1]["DeploymentStatus"]["StageStatus"], "INPROGRESS")


class Fuzz(unittest.TestCase):
    """Malformed JSON, wrong types, huge bodies and unknown members, on every supported operation."""

    def check(self, status, body, allowed=CLIENT_ERRORS):
        self.assertLess(status, 500, body)
        if status >= 400:
            code = body.get("__type", "")
            self.assertIn(code, allowed, body)
            self.assertTrue(body.get("message"), body)

    def test_control_plane(self):
        model = client().meta.service_model
        for name in SUPPORTED:
            target = "SageMaker." + name
            with self.subTest(operation=name, case="malformed JSON"):
                status, body = signed_raw("/", b'{"DeviceFleetName": "x",', target)
                self.assertEqual((status, body.get("__type")), (400, "SerializationException"))
            with self.subTest(operation=name, case="not an object"):
                status, body = signed_raw("/", b"[1,2,3]", target)
                self.assertEqual((status, body.get("__type")), (400, "SerializationException"))
            with self.subTest(operation=name, case="huge body"):
                # The server answers as soon as Content-Length exceeds the limit, and may close the connection
                # before the client has sent it all: a reset is a refusal too.
                try:
                    status, body = signed_raw("/", b'{"Description": "' + b"a" * (2 * 1024 * 1024) + b'"}', target)
                    self.assertEqual((status, body.get("__type")), (400, "ValidationException"))
                except urllib.error.URLError as error:
                    self.assertIsInstance(error.reason, (BrokenPipeError, ConnectionResetError))
            members = model.operation_model(name).input_shape.members
            for member, shape in members.items():
                with self.subTest(operation=name, case="wrong type", member=member):
                    status, body = signed_raw("/", json.dumps({member: wrong_value(shape)}).encode(), target)
                    self.check(status, body)
                    self.assertEqual(status, 400)
            with self.subTest(operation=name, case="unknown members ignored"):
                status, body = signed_raw("/", json.dumps({"NoSuchMember": {"deep": [1, 2]}, "__proto__": {"x": 1}}).encode(), target)
                self.check(status, body)
                if status == 400:
                    self.assertNotIn("NoSuchMember", body["message"])
            with self.subTest(operation=name, case="NUL in a string"):
                status, body = signed_raw("/", json.dumps({m: "a\u0000b" for m, s in members.items() if s.type_name == "string"}).encode(), target)
                self.check(status, body)
        # The server is still serving.
        client().list_device_fleets()

    def test_deeply_nested_json(self):
        for body in (b"[" * 500_000 + b"]" * 500_000, b'{"Tags": ' + b"[" * 400_000 + b"]" * 400_000 + b"}"):
            status, answer = signed_raw("/", body, "SageMaker.ListDeviceFleets")
            self.check(status, answer)
        client().list_device_fleets()

    def test_unknown_members_are_ignored_on_success(self):
        status, body = signed_raw("/", json.dumps({"MaxResults": 5, "FutureMember": "x"}).encode(), "SageMaker.ListDeviceFleets")
        self.assertEqual(status, 200, body)

    def test_data_plane(self):
        model = client("sagemaker-edge").meta.service_model
        for name in EDGE:
            with self.subTest(operation=name, case="malformed JSON"):
                status, body = signed_raw("/" + name, b"{nope")
                self.assertLess(status, 500, body)
            for member, shape in model.operation_model(name).input_shape.members.items():
                with self.subTest(operation=name, case="wrong type", member=member):
                    status, body = signed_raw("/" + name, json.dumps({member: wrong_value(shape)}).encode())
                    self.assertLess(status, 500, body)
                    self.assertTrue(body.get("message"), body)


if __name__ == "__main__":
    unittest.main(verbosity=2)
