"""A SageMaker Edge Manager client application's calls, from Python, against a real edgefleet-agent.

Run by python-client.test.ts with gRPC C-core (grpcio) and stubs that protoc generated from agent.proto
(agent_pb2, agent_pb2_grpc on PYTHONPATH), as existing Edge Manager applications use them. The test starts the
agent and passes, in the environment:
  EF_TARGET     the gRPC target, unix:<socket path>
  EF_PACKAGES   JSON {"multi-io": <folder>, "int-types": <folder>, "unsigned": <folder>}: extracted packages,
                the first two signed under a root the agent trusts, the last not signed
  EF_INPUTS     JSON {"multi-io": {"a": [floats], "b": [floats]}, "int-types": {"counts": ["<int64>"], "bytes": [ints]}}
  EF_MAX_MESSAGE_BYTES   the agent's -m
The script asserts nothing: it prints one JSON object of what each call answered (a response, or the gRPC status
code's name and details), and the test asserts on it. A call that fails with anything but a gRPC status ends it.
"""

import json
import os
import struct
import sys
import time

import grpc

import agent_pb2
import agent_pb2_grpc

TARGET = os.environ["EF_TARGET"]
PACKAGES = json.loads(os.environ["EF_PACKAGES"])
INPUTS = json.loads(os.environ["EF_INPUTS"])
MAX_MESSAGE_BYTES = int(os.environ["EF_MAX_MESSAGE_BYTES"])
# Every call has a deadline, so an agent that stops answering fails the test instead of hanging it.
DEADLINE_SECONDS = 30

# struct formats of the DataType enum, little-endian as the agent's byte_data is.
FORMATS = {
    agent_pb2.UINT8: "B",
    agent_pb2.INT16: "h",
    agent_pb2.INT32: "i",
    agent_pb2.INT64: "q",
    agent_pb2.FLOAT32: "f",
    agent_pb2.FLOAT64: "d",
}


def call(method, request):
    """{"response": …} or {"code": "<StatusCode name>", "details": "…"}."""
    try:
        return {"response": method(request, timeout=DEADLINE_SECONDS)}
    except grpc.RpcError as error:
        return {"code": error.code().name, "details": error.details()}


def metadata(m):
    return {
        "name": m.name.decode("utf-8", "backslashreplace"),
        "data_type": agent_pb2.DataType.Name(m.data_type),
        "shape": list(m.shape),
    }


def model(m):
    return {
        "handle": m.handle,
        "name": m.name,
        "url": m.url,
        "inputs": [metadata(t) for t in m.input_tensor_metadatas],
        "outputs": [metadata(t) for t in m.output_tensor_metadatas],
    }


def status_only(outcome):
    """The outcome with an empty response (UnLoadModel, CaptureData) reduced to {"ok": true}."""
    return {"ok": True} if "response" in outcome else outcome


def encode(values, data_type):
    fmt = FORMATS[data_type]
    return struct.pack(f"<{len(values)}{fmt}", *values)


def decode(tensor):
    fmt = FORMATS[tensor.tensor_metadata.data_type]
    count = len(tensor.byte_data) // struct.calcsize(fmt)
    values = list(struct.unpack(f"<{count}{fmt}", tensor.byte_data))
    # int64 as decimal strings: JSON readers that hold numbers as doubles lose digits past 2^53.
    if tensor.tensor_metadata.data_type == agent_pb2.INT64:
        values = [str(v) for v in values]
    return {**metadata(tensor.tensor_metadata), "values": values, "bytes": len(tensor.byte_data)}


def predicted(outcome):
    if "response" not in outcome:
        return outcome
    return {"tensors": [decode(t) for t in outcome["response"].tensors]}


def tensor(meta, values, shape=None):
    """A byte_data tensor built the way clients do: the model's metadata copied, the data packed to it."""
    copied = agent_pb2.TensorMetadata()
    copied.CopyFrom(meta)
    if shape is not None:
        del copied.shape[:]
        copied.shape.extend(shape)
    return agent_pb2.Tensor(tensor_metadata=copied, byte_data=encode(values, meta.data_type))


def main():
    results = {}
    with grpc.insecure_channel(TARGET) as channel:
        agent = agent_pb2_grpc.AgentStub(channel)
        listed = call(agent.ListModels, agent_pb2.ListModelsRequest())["response"].models
        results["list_empty"] = [model(m) for m in listed]

        # LoadModel: by the newest revision's handle, and by the older revisions' name.
        loaded = call(agent.LoadModel, agent_pb2.LoadModelRequest(url=PACKAGES["multi-io"], handle="multi-io"))
        results["load_multi_io"] = model(loaded["response"].model) if "response" in loaded else loaded
        loaded = call(agent.LoadModel, agent_pb2.LoadModelRequest(url=PACKAGES["int-types"], name="ints"))
        results["load_ints"] = model(loaded["response"].model) if "response" in loaded else loaded
        results["load_again"] = status_only(
            call(agent.LoadModel, agent_pb2.LoadModelRequest(url=PACKAGES["multi-io"], handle="multi-io"))
        )
        results["load_unsigned"] = status_only(
            call(agent.LoadModel, agent_pb2.LoadModelRequest(url=PACKAGES["unsigned"], handle="unsigned"))
        )
        results["load_bad_name"] = status_only(
            call(agent.LoadModel, agent_pb2.LoadModelRequest(url=PACKAGES["multi-io"], handle="multi_io"))
        )

        listed = call(agent.ListModels, agent_pb2.ListModelsRequest())["response"].models
        results["list"] = [model(m) for m in listed]
        described = call(agent.DescribeModel, agent_pb2.DescribeModelRequest(name="multi-io"))
        results["describe"] = model(described["response"].model) if "response" in described else described
        results["describe_absent"] = status_only(
            call(agent.DescribeModel, agent_pb2.DescribeModelRequest(handle="absent"))
        )

        # Predict with requests built from DescribeModel's metadata, inputs in reverse order (matched by name).
        multi_io = described["response"].model
        by_name = {m.name.decode(): m for m in multi_io.input_tensor_metadatas}
        multi_io_tensors = [tensor(by_name[n], INPUTS["multi-io"][n]) for n in ("b", "a")]
        results["predict_multi_io"] = predicted(
            call(agent.Predict, agent_pb2.PredictRequest(handle="multi-io", tensors=multi_io_tensors))
        )
        ints = call(agent.DescribeModel, agent_pb2.DescribeModelRequest(handle="ints"))["response"].model
        counts_meta, bytes_meta = ints.input_tensor_metadatas
        counts = [int(c) for c in INPUTS["int-types"]["counts"]]
        int_tensors = [
            tensor(counts_meta, counts, shape=[len(counts)]),  # the model's dimension is dynamic (-1)
            tensor(bytes_meta, INPUTS["int-types"]["bytes"]),
        ]
        results["predict_ints"] = predicted(
            call(agent.Predict, agent_pb2.PredictRequest(name="ints", tensors=int_tensors))
        )

        # Requests the model does not take: a wrong shape (same byte count), a wrong type, an absent model.
        a_meta = by_name["a"]
        wrong_shape = [tensor(a_meta, INPUTS["multi-io"]["a"], shape=[4, 1]), multi_io_tensors[0]]
        results["predict_wrong_shape"] = predicted(
            call(agent.Predict, agent_pb2.PredictRequest(handle="multi-io", tensors=wrong_shape))
        )
        wrong_type = agent_pb2.Tensor()
        wrong_type.CopyFrom(multi_io_tensors[1])
        wrong_type.tensor_metadata.data_type = agent_pb2.FLOAT64
        wrong_types = [multi_io_tensors[0], wrong_type]
        results["predict_wrong_type"] = predicted(
            call(agent.Predict, agent_pb2.PredictRequest(handle="multi-io", tensors=wrong_types))
        )
        results["predict_absent"] = predicted(
            call(agent.Predict, agent_pb2.PredictRequest(handle="absent", tensors=multi_io_tensors))
        )

        # A request of four times the agent's -m (more than HTTP/2's first flow-control window, so the agent refuses
        # it while the client is still sending): RESOURCE_EXHAUSTED, and the agent serves the next call.
        big_counts = [7] * (MAX_MESSAGE_BYTES // 2)
        big = [tensor(counts_meta, big_counts, shape=[len(big_counts)]), int_tensors[1]]
        big_request = agent_pb2.PredictRequest(handle="ints", tensors=big)
        results["oversized_bytes"] = big_request.ByteSize()
        results["predict_oversized"] = predicted(call(agent.Predict, big_request))
        results["predict_after_oversized"] = predicted(
            call(agent.Predict, agent_pb2.PredictRequest(handle="ints", tensors=int_tensors))
        )

        # CaptureData: the agent's batch size is 2, so the first capture waits (IN_PROGRESS) until the second.
        outputs = results["predict_multi_io"]["tensors"]
        results["capture_first_seconds"] = int(time.time()) - 60
        first = agent_pb2.CaptureDataRequest(
            model_handle="multi-io",
            capture_id="capture-python-1",
            inference_timestamp=agent_pb2.Timestamp(seconds=results["capture_first_seconds"], nanos=5),
            input_tensors=multi_io_tensors,
            output_tensors=[
                agent_pb2.Tensor(
                    tensor_metadata=agent_pb2.TensorMetadata(
                        name=o["name"].encode(), data_type=agent_pb2.FLOAT32, shape=o["shape"]
                    ),
                    byte_data=encode(o["values"], agent_pb2.FLOAT32),
                )
                for o in outputs
            ],
            inputs=[agent_pb2.AuxiliaryData(name="json", encoding=agent_pb2.JSON, byte_data=b'{"camera":"front"}')],
        )
        results["capture_first"] = status_only(call(agent.CaptureData, first))
        status = call(agent.GetCaptureDataStatus, agent_pb2.GetCaptureDataStatusRequest(capture_id="capture-python-1"))
        results["status_first_waiting"] = agent_pb2.CaptureDataStatus.Name(status["response"].status)
        results["capture_duplicate"] = status_only(call(agent.CaptureData, first))
        future = agent_pb2.CaptureDataRequest()
        future.CopyFrom(first)
        future.capture_id = "capture-python-future"
        future.inference_timestamp.seconds = int(time.time()) + 3600
        results["capture_future"] = status_only(call(agent.CaptureData, future))
        absent = agent_pb2.CaptureDataRequest(
            model_handle="absent", capture_id="c-absent", input_tensors=multi_io_tensors
        )
        results["capture_absent_model"] = status_only(call(agent.CaptureData, absent))
        # The older revisions' model_name, no timestamp (the agent uses the time of receipt).
        second = agent_pb2.CaptureDataRequest(
            model_name="ints", capture_id="abc-1685563523430", input_tensors=int_tensors
        )
        results["capture_second"] = status_only(call(agent.CaptureData, second))
        results["status_final"] = {}
        for capture_id in ("capture-python-1", "abc-1685563523430"):
            # The batch is written in the background: ask until it is no longer IN_PROGRESS (bounded).
            for _ in range(300):
                status = call(agent.GetCaptureDataStatus, agent_pb2.GetCaptureDataStatusRequest(capture_id=capture_id))
                if "response" not in status or status["response"].status != agent_pb2.IN_PROGRESS:
                    break
                time.sleep(0.1)
            results["status_final"][capture_id] = (
                agent_pb2.CaptureDataStatus.Name(status["response"].status) if "response" in status else status
            )
        results["status_unknown"] = status_only(
            call(agent.GetCaptureDataStatus, agent_pb2.GetCaptureDataStatusRequest(capture_id="never-sent"))
        )

        # UnLoadModel: gone from the list; a second unload is NOT_FOUND.
        results["unload"] = status_only(call(agent.UnLoadModel, agent_pb2.UnLoadModelRequest(handle="multi-io")))
        results["unload_again"] = status_only(call(agent.UnLoadModel, agent_pb2.UnLoadModelRequest(name="multi-io")))
        results["list_after_unload"] = [
            m.handle for m in call(agent.ListModels, agent_pb2.ListModelsRequest())["response"].models
        ]
        results["predict_unloaded"] = status_only(
            call(agent.Predict, agent_pb2.PredictRequest(handle="multi-io", tensors=multi_io_tensors))
        )
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
