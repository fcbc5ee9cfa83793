import { readFile } from 'node:fs/promises';
import { writeTestModel } from '@edgefleet/core';
import { expect } from 'vitest';

/** Writes the small test model `tiny` under `dir` and uploads it as tiny version 1 through the operator API. */
export async function uploadTinyModel(url: string, adminToken: string, dir: string): Promise<void> {
  const onnx = await writeTestModel('tiny', dir);
  const uploaded = await fetch(`${url}/api/v1/models/tiny/versions/1`, {
    method: 'POST',
    headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/octet-stream' },
    body: await readFile(onnx),
  });
  expect(uploaded.status).toBe(201);
}
