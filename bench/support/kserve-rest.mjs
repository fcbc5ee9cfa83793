// KServe v2 REST clients shared by the benchmarks (agent-inference.bench.mjs, agent-profile.mjs): a POST over a
// Unix socket, and a client whose inputs and outputs lie in System V shared memory regions registered with the
// agent (the KServe system shared memory extension).
import { request as httpRequest, Agent as HttpAgent } from 'node:http';

/** POSTs `body` to `path`; resolves the answer's headers and body, rejects on any status but 200. */
export function restPost(agent, socketPath, path, body, headers) {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { agent, socketPath, path, method: 'POST', headers: { 'content-length': body.length, ...headers } },
      (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () => {
          const data = Buffer.concat(chunks);
          if (res.statusCode !== 200)
            reject(new Error(`HTTP ${res.statusCode}: ${data.toString().slice(0, 300)}`));
          else resolve({ headers: res.headers, data });
        });
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

let regionCount = 0;

/**
 * The JSON body of a KServe inference request whose inputs and outputs lie in the named registered regions
 * (`model` as for restSharedMemoryCaller). Also what the benchmark's HTTP echo floor sends for that path.
 */
export function sharedMemoryRequestBody(model, inputRegionNames, outputRegionNames) {
  const inputs = model.tensors.map((t, i) => ({
    name: t.name,
    shape: t.shape,
    datatype: t.kserve,
    parameters: { shared_memory_region: inputRegionNames[i], shared_memory_byte_size: t.bytes.length },
  }));
  const outputs = model.outputs.map((o, i) => ({
    name: o.name,
    parameters: { shared_memory_region: outputRegionNames[i], shared_memory_byte_size: o.byteLength },
  }));
  return Buffer.from(JSON.stringify({ inputs, outputs }));
}

/**
 * A REST client whose inputs and outputs are in System V shared memory regions registered with the agent (the
 * KServe system shared memory extension): only JSON crosses the socket. Its own segments and regions; each
 * segment's removal is pushed onto `cleanups`.
 *
 * `addon`: the agent's System V addon (loadSysvShmAddon of packages/agent/dist/shm). `model`: { key, tensors:
 * [{ name, shape, kserve, bytes }], outputs: [{ name, byteLength }], check(outputs: Buffer[]) }. With `check`,
 * one call is made first and its outputs, read back from their regions, are given to model.check.
 */
export async function restSharedMemoryCaller(addon, socketPath, model, cleanups, check) {
  const agent = new HttpAgent({ keepAlive: true, maxSockets: 1 });
  const json = { 'content-type': 'application/json' };
  const region = async (bytes, size) => {
    const { shmid } = addon.create(size);
    cleanups.push(() => addon.remove(shmid));
    const mapping = addon.attachReadWrite(shmid);
    if (bytes) new Uint8Array(mapping).set(bytes);
    addon.detach(mapping);
    const name = `bench-${process.pid}-${++regionCount}`;
    const body = Buffer.from(JSON.stringify({ key: String(shmid), byte_size: size }));
    await restPost(agent, socketPath, `/v2/systemsharedmemory/region/${name}/register`, body, json);
    return { name, shmid };
  };
  const inputRegions = [];
  for (const t of model.tensors) inputRegions.push(await region(t.bytes, t.bytes.length));
  const outputRegions = [];
  for (const o of model.outputs) outputRegions.push(await region(null, o.byteLength));
  const body = sharedMemoryRequestBody(
    model,
    inputRegions.map((r) => r.name),
    outputRegions.map((r) => r.name),
  );
  const call = () => restPost(agent, socketPath, `/v2/models/${model.key}/infer`, body, json);
  if (check) {
    await call();
    model.check(
      outputRegions.map((r, i) => {
        const mapping = addon.attachReadWrite(r.shmid);
        const copy = Buffer.from(new Uint8Array(mapping, 0, model.outputs[i].byteLength).slice());
        addon.detach(mapping);
        return copy;
      }),
    );
  }
  return { call, close: () => agent.destroy() };
}
