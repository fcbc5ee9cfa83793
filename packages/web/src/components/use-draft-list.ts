import { useState } from 'preact/hooks';

/** A form's growable list of drafts (the plan form's models and stages), each known by a stable key. */
export interface DraftList<T extends { key: number }> {
  items: T[];
  update(key: number, change: Partial<T>): void;
  remove(key: number): void;
  /** Appends a new draft; `create` gets a key no draft has and the new draft's position. */
  add(): void;
  /** Back to the single first draft, as after a successful submit. */
  reset(): void;
}

/** `create(key, index)` makes the draft at position `index`; the list starts with one, at position 0. */
export function useDraftList<T extends { key: number }>(
  create: (key: number, index: number) => T,
): DraftList<T> {
  const [items, setItems] = useState<T[]>(() => [create(0, 0)]);
  return {
    items,
    update: (key, change) =>
      setItems((current) => current.map((item) => (item.key === key ? { ...item, ...change } : item))),
    remove: (key) => setItems((current) => current.filter((item) => item.key !== key)),
    add: () =>
      setItems((current) => [
        ...current,
        create(Math.max(...current.map((item) => item.key)) + 1, current.length),
      ]),
    reset: () => setItems([create(0, 0)]),
  };
}
