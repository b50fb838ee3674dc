/** push(...items) without the argument-count limit that spread hits near 100k items. */
export function appendAll<T>(target: T[], items: readonly T[]): void {
  for (const item of items) target.push(item);
}
