/**
 * Whether `promise` settles within `ms`: true when it resolved in time, false when the time ran out first (it
 * goes on; the caller handles its outcome from then on); rejects when it rejected in time. For work that must
 * not hold something else up forever, such as start-up waiting for a model load.
 */
export async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([promise.then(() => true as const), late]);
  } finally {
    clearTimeout(timer);
  }
}
