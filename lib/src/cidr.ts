// IPv4 arithmetic on unsigned 32-bit numbers. Pure functions, no allocation
// beyond the strings they return.

export interface Ipv4Net {
  /** Network address as an unsigned 32-bit number. */
  readonly ip: number;
  readonly prefix: number;
}

const IPV4_RE = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

export function isIpv4(s: string): boolean {
  return IPV4_RE.test(s);
}

/** Parses dotted-quad IPv4; returns undefined when malformed. */
export function parseIpv4(s: string): number | undefined {
  if (typeof s !== "string" || !IPV4_RE.test(s)) return undefined;
  const p = s.split(".");
  return ((+p[0]! << 24) | (+p[1]! << 16) | (+p[2]! << 8) | +p[3]!) >>> 0;
}

export function formatIpv4(n: number): string {
  return `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
}

export function maskOf(prefix: number): number {
  return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
}

/** Parses "a.b.c.d/n". With strict, host bits must be zero. */
export function parseCidr(s: string, strict = true): Ipv4Net | undefined {
  if (typeof s !== "string") return undefined;
  const slash = s.indexOf("/");
  if (slash < 0) return undefined;
  const ip = parseIpv4(s.slice(0, slash));
  const lenStr = s.slice(slash + 1);
  if (ip === undefined || !/^\d{1,2}$/.test(lenStr)) return undefined;
  const prefix = Number(lenStr);
  if (prefix > 32) return undefined;
  const net = (ip & maskOf(prefix)) >>> 0;
  if (strict && net !== ip) return undefined;
  return { ip: net, prefix };
}

export function formatCidr(n: Ipv4Net): string {
  return `${formatIpv4(n.ip)}/${n.prefix}`;
}

export function sizeOf(prefix: number): number {
  return 2 ** (32 - prefix);
}

export function contains(net: Ipv4Net, ip: number): boolean {
  return ((ip & maskOf(net.prefix)) >>> 0) === net.ip;
}

export function containsNet(outer: Ipv4Net, inner: Ipv4Net): boolean {
  return inner.prefix >= outer.prefix && contains(outer, inner.ip);
}

export function overlaps(a: Ipv4Net, b: Ipv4Net): boolean {
  return a.prefix <= b.prefix ? contains(a, b.ip) : contains(b, a.ip);
}

/** The last address of the network (its broadcast address). */
export function lastAddress(n: Ipv4Net): number {
  return (n.ip + sizeOf(n.prefix) - 1) >>> 0;
}
