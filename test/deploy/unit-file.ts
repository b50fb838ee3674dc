// Just enough of systemd's unit-file syntax for the tests: sections, repeated
// keys in order, backslash continuations and comments. An empty assignment
// resets a list setting, as systemd does.
export type UnitFile = Map<string, Map<string, string[]>>;

export function parseUnitFile(text: string): UnitFile {
  const unit: UnitFile = new Map();
  let section: Map<string, string[]> | undefined;
  const lines = text.replace(/\\\n/g, " ").split("\n");
  for (const [i, raw] of lines.entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const header = /^\[([A-Za-z]+)\]$/.exec(line);
    if (header) {
      section = new Map();
      unit.set(header[1]!, section);
      continue;
    }
    const eq = line.indexOf("=");
    if (!section || eq < 0) throw new Error(`line ${i + 1}: not "[Section]" or "Key=value": ${line}`);
    const key = line.slice(0, eq).trim();
    const value = line.slice(eq + 1).trim();
    section.set(key, value === "" ? [] : [...(section.get(key) ?? []), value]);
  }
  return unit;
}

/** Every value of a key (empty when unset or reset), or undefined when the key never appears. */
export function setting(unit: UnitFile, section: string, key: string): string[] | undefined {
  return unit.get(section)?.get(key);
}

/** Space-separated list settings (CapabilityBoundingSet=, RuntimeDirectory=, ...) as one list. */
export function words(unit: UnitFile, section: string, key: string): string[] {
  return (setting(unit, section, key) ?? []).flatMap((v) => v.split(/\s+/));
}

/** KEY=value lines of an environment file; with `commented`, also "#KEY=value" examples. */
export function envAssignments(text: string, commented = false): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of text.split("\n")) {
    const m = (commented ? /^#?([A-Z][A-Z0-9_]*)=(.*)$/ : /^([A-Z][A-Z0-9_]*)=(.*)$/).exec(line.trim());
    if (m) out.set(m[1]!, m[2]!);
  }
  return out;
}
