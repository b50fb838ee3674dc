// How each resource reads in a terminal. `-o json` bypasses all of this and
// prints the API's own JSON, so only people depend on these layouts.
import type { components as Server, paths as ServerPaths } from "../../gen/api/lease-server.js";
import type { components as Agent } from "../../gen/api/node-agent.js";
import { ago, dash, renderPairs, renderTable, until } from "./table.js";

type Json<P extends keyof ServerPaths, M extends "get"> = ServerPaths[P][M] extends { responses: { 200: { content: { "application/json": infer T } } } } ? T : never;
export type NodesBody = Json<"/v1/nodes", "get">;
export type LeasesBody = Json<"/v1/leases", "get">;
export type NetworkBody = Json<"/v1/network", "get">;
export type ReservationsBody = Json<"/v1/reservations", "get">;
type Node = Server["schemas"]["Node"];
type Peer = Agent["schemas"]["Peer"];

const health = (n: Node) => (n.healthy === null ? "-" : n.healthy ? "ok" : "problems");

export function nodesSummary(b: Pick<NodesBody, "revision" | "agents" | "convergence">): string {
  const a = b.agents;
  const c = b.convergence;
  const last = c.lastSeconds === null ? "no change converged yet" : `last change converged in ${formatSeconds(c.lastSeconds)} (revision ${c.lastRevision})`;
  const pending = c.pendingRevisions > 0 ? `; ${c.pendingRevisions} revision${c.pendingRevisions === 1 ? "" : "s"} pending` : "";
  return `revision ${b.revision}: ${a.converged} converged, ${a.lagging} lagging, ${a.unhealthy} unhealthy, ${a.disconnected} disconnected; ${last}${pending}\n`;
}

function formatSeconds(s: number): string {
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(s < 10 ? 2 : 1)} s`;
}

export function nodesView(b: NodesBody, now: number): string {
  const rows = b.nodes.map((n) => [
    n.nodeName, dash(n.subnet), dash(n.publicIP), dash(n.backendType), n.state,
    dash(n.appliedRevision), dash(n.lagRevisions), health(n), ago(n.lastReportAt, now),
  ]);
  let out = b.nodes.length === 0 ? "no nodes: no live leases and no agent reports\n" : renderTable(["NODE", "SUBNET", "PUBLIC-IP", "BACKEND", "STATE", "APPLIED", "LAG", "HEALTH", "LAST-REPORT"], rows);
  // Problems are sentences: a column would make the table unreadable.
  const troubled = b.nodes.filter((n) => n.problems.length > 0);
  if (troubled.length > 0) {
    out += "\nproblems:\n";
    for (const n of troubled) for (const p of n.problems) out += `  ${n.nodeName}: ${p}\n`;
  }
  return `${out}\n${nodesSummary(b)}`;
}

export function leasesView(leases: LeasesBody, now: number): string {
  if (leases.length === 0) return "no leases\n";
  return renderTable(["SUBNET", "NODE", "PUBLIC-IP", "BACKEND", "EXPIRES", "REVISION"],
    leases.map((l) => [l.subnet, l.nodeName, l.publicIP, l.backendType, until(l.expiresAt, now), String(l.revision)]));
}

export function networkView(n: NetworkBody): string {
  const { type, ...rest } = n.backend as { type?: unknown };
  const settings = Object.entries(rest).map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(" ");
  const backend = `${String(type ?? "-")}${settings ? `  (${settings})` : ""}`;
  return renderPairs([
    ["network", n.network],
    ["subnet length", `/${n.subnetLen}`],
    ["subnets", `${n.subnets}: ${n.subnetMin}/${n.subnetLen} .. ${n.subnetMax}/${n.subnetLen}`],
    ["leased", `${n.leases} (${n.subnets - n.leases} free)`],
    ["backend", backend],
  ]);
}

export function reservationsView(r: ReservationsBody): string {
  if (r.length === 0) return "no reservations\n";
  return renderTable(["SUBNET", "NODE"], r.map((x) => [x.subnet, x.nodeName]));
}

export function peersView(peers: readonly Peer[], now: number): string {
  if (peers.length === 0) return "no peers\n";
  const wg = peers.some((p) => p.wireguard);
  const header = ["NODE", "SUBNET", "PUBLIC-IP", "STATE", "PATH", ...(wg ? ["HANDSHAKE"] : []), "REASON"];
  return renderTable(header, peers.map((p) => [
    p.nodeName, p.subnet, p.publicIP, p.state, dash(p.path),
    ...(wg ? [p.wireguard ? (p.wireguard.lastHandshake ? ago(p.wireguard.lastHandshake, now) : "never") : "-"] : []),
    dash(p.reason),
  ]));
}
