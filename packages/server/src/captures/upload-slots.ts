/**
 * Slots for device bodies being read and parsed: at most `total` at once server-wide and `perDevice` for any
 * one device. A slot is taken before the body is read and given back when the answer is sent, so the memory
 * that bodies cost (the JSON string, its parse, the decoded file) is bounded by the slots, not by how many
 * connections devices may open. Never queues: a caller that gets no slot is told to retry later.
 */
export class UploadSlots {
  readonly #total: number;
  readonly #perDevice: number;
  readonly #byDevice = new Map<string, number>();
  #inUse = 0;

  constructor(limits: { total: number; perDevice: number }) {
    this.#total = limits.total;
    this.#perDevice = limits.perDevice;
  }

  /** Slots taken and not yet given back, server-wide (a gauge in metrics/). */
  get inUse(): number {
    return this.#inUse;
  }

  /**
   * Takes a slot for `device`: a release function (idempotent), or why none was free. The device's own
   * limit is checked first, so a device that is over it learns that it is the one to slow down.
   */
  take(device: string): { release: () => void } | { refused: 'device' | 'server' } {
    const held = this.#byDevice.get(device) ?? 0;
    if (held >= this.#perDevice) return { refused: 'device' };
    if (this.#inUse >= this.#total) return { refused: 'server' };
    this.#byDevice.set(device, held + 1);
    this.#inUse += 1;
    let released = false;
    return {
      release: () => {
        if (released) return;
        released = true;
        this.#inUse -= 1;
        const left = (this.#byDevice.get(device) ?? 1) - 1;
        if (left === 0) this.#byDevice.delete(device);
        else this.#byDevice.set(device, left);
      },
    };
  }
}
