/**
 * The server's upload slots for large capture bodies, as its /metrics shows them: tests wait on the slots the server
 * holds (state) rather than retrying uploads until a deadline (time), which a loaded machine can pass. Here, not in
 * the server's test folder, because the agent's tests hold slots of a real server too.
 */
import { expect, vi } from 'vitest';

/** The upload slots the server at `operatorUrl` holds now (`token` may read /metrics). */
export async function uploadSlotsInUse(operatorUrl: string, token: string): Promise<number> {
  const answer = await fetch(`${operatorUrl}/metrics`, { headers: { authorization: `Bearer ${token}` } });
  const text = await answer.text();
  const sample = /^edgefleet_server_capture_upload_slots_in_use (\d+)$/m.exec(text);
  if (sample === null)
    throw new Error(`no upload-slot gauge in /metrics (${answer.status}): ${text.slice(0, 200)}`);
  return Number(sample[1]);
}

/**
 * Waits until the server holds `count` upload slots: an upload has its slot once its headers are read and its
 * device authenticated (a moment after it starts), and gives it back once its answer is sent or it goes away.
 * The bound is for a condition that must come, far above what a loaded machine takes.
 */
export const uploadSlotsHeld = (operatorUrl: string, token: string, count: number) =>
  vi.waitFor(async () => expect(await uploadSlotsInUse(operatorUrl, token)).toBe(count), {
    timeout: 30_000,
    interval: 50,
  });
