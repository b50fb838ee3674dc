// Plain aligned text for people: columns padded to their widest cell, two
// spaces apart, no trailing blanks (so `column`, `awk` and diffs behave).

export function renderTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: readonly string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join("  ").trimEnd();
  return [line(header), ...rows.map(line)].join("\n") + "\n";
}

/** "key   value" lines, keys padded to the longest. */
export function renderPairs(pairs: readonly (readonly [string, string])[]): string {
  const w = Math.max(...pairs.map(([k]) => k.length));
  return pairs.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join("\n") + "\n";
}

/** 42 s, 5 m, 3 h 10 m, 2 d: coarse on purpose, a table cell is not a log. */
export function formatSpan(ms: number): string {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 120) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 48) return m % 60 ? `${h}h${m % 60}m` : `${h}h`;
  return `${Math.floor(h / 24)}d`;
}

/** "12s ago" for a past ISO time, "-" for none. */
export function ago(iso: string | null | undefined, now: number): string {
  return iso ? `${formatSpan(now - Date.parse(iso))} ago` : "-";
}

/** "in 23h59m" for a future ISO time, "expired" for a past one, `none` for null. */
export function until(iso: string | null | undefined, now: number, none = "never"): string {
  if (!iso) return none;
  const ms = Date.parse(iso) - now;
  return ms <= 0 ? "expired" : `in ${formatSpan(ms)}`;
}

export const dash = (v: string | number | null | undefined): string => (v === null || v === undefined || v === "" ? "-" : String(v));
