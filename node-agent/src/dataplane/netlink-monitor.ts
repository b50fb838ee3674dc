// rtnetlink notifications (links, IPv4 addresses, IPv4 routes, nexthops,
// neighbours and FDB entries) on a socket of their own, turned into
// KernelChange events. The kernel announces no route that goes with a
// deleted nexthop object, so the nexthop's own deletion stands for it.
//
// Every object the agent itself adds comes back here too (15,000 messages for
// a full VXLAN pass at 5,000 peers), so parsing stays minimal: neighbour
// messages are parsed only on the devices a listener asked about, routes only
// in the main table. If the socket still overflows (the kernel drops
// notifications and reports ENOBUFS), it is reopened, and then listeners get
// a "lost" event: the caller resyncs everything, the standard recovery.
// (scripts/patch-netlink.mjs makes the binding report an overflow as an
// error instead of aborting the process, and gives the socket the receive
// buffer asked for even above net.core.rmem_max.)
import { RawNetlinkSocket } from "netlink/dist/raw.js";
import { WEFT_RT_PROTO, type KernelChange, type Route } from "./dataplane.js";
import { dstOfNexthopId } from "./nexthop-id.js";
import { RECV_BUFFER } from "./netlink-channel.js";
import {
  AF_BRIDGE, AF_INET, isMainTable, isOurRoute, isOurRouteHeader, neighbourHeader, parseAddress, parseLink, parseNeighbour, parseNexthop, parseRoute, RTM, RTNLGRP, splitMessages, type RawMessage,
} from "./rtnl-codec.js";

const NETLINK_ROUTE = 0;
const REOPEN_DELAY_MS = 100;
/** Route, nexthop and neighbour (ARP, FDB) notifications: the ones a bulk pass floods itself with. */
const OBJECT_GROUPS = [RTNLGRP.NEIGH, RTNLGRP.IPV4_ROUTE, RTNLGRP.NEXTHOP];
/** Larger than any single notification (a link with all its attributes is a few KiB). */
const MSG_BUFFER = 16 << 10;

export class NetlinkMonitor {
  private sock: RawNetlinkSocket | undefined;
  private readonly listeners = new Set<(c: KernelChange) => void>();
  private reopen: NodeJS.Timeout | undefined;
  private muted = false;
  /** Devices whose neighbour and FDB entries matter; others are skipped before parsing. */
  readonly watchedLinks = new Set<number>();

  constructor(private readonly onError?: (err: Error) => void, private readonly recvBuffer = RECV_BUFFER) {}

  subscribe(listener: (c: KernelChange) => void): () => void {
    this.listeners.add(listener);
    this.open();
    return () => {
      this.listeners.delete(listener);
      if (this.listeners.size === 0) this.close();
    };
  }

  /** Opens the socket; on failure tries again later. True when it is open. */
  private open(): boolean {
    if (this.sock) return true;
    let s: RawNetlinkSocket | undefined;
    try {
      // No peeking: one recvmsg per notification into a buffer big enough for any of them (peeking
      // first doubles the syscalls, and a full pass makes thousands of notifications).
      s = new RawNetlinkSocket(NETLINK_ROUTE, { recvBufferSize: this.recvBuffer, sendBufferSize: 4096, messagePeeking: false, msgBufferSize: MSG_BUFFER });
      s.unref();
      for (const g of [RTNLGRP.LINK, RTNLGRP.IPV4_IFADDR, ...(this.muted ? [] : OBJECT_GROUPS)]) s.addMembership(g);
    } catch (err) {
      try { s?.close(); } catch { /* never opened */ }
      this.onError?.(err as Error);
      this.reopenLater();
      return false;
    }
    const sock = s;
    sock.on("message", (buf) => splitMessages(buf, (m) => this.handle(m)));
    sock.on("truncatedMessage", () => this.emit({ kind: "lost", why: "overflow" }));
    sock.on("error", (err) => {
      if (this.sock !== sock) return;
      this.sock = undefined;
      // Closing inside the binding's own callback is not safe; it closes the socket itself after an error.
      setImmediate(() => { try { sock.close(); } catch { /* closed by the binding already */ } });
      this.onError?.(err);
      this.reopenLater();
    });
    this.sock = sock;
    return true;
  }

  /** After a failure: reopen, then tell the listeners that changes may have been missed meanwhile. */
  private reopenLater(): void {
    this.reopen ??= setTimeout(() => {
      this.reopen = undefined;
      if (this.listeners.size && this.open()) this.emit({ kind: "lost", why: "overflow" });
    }, REOPEN_DELAY_MS).unref();
  }

  private emit(c: KernelChange): void {
    for (const l of this.listeners) l(c);
  }

  private handle(m: RawMessage): void {
    switch (m.type) {
      case RTM.NEWLINK:
      case RTM.DELLINK: {
        const link = parseLink(m);
        if (link) this.emit({ kind: "link", deleted: m.type === RTM.DELLINK, link });
        return;
      }
      case RTM.NEWADDR:
      case RTM.DELADDR: {
        const address = parseAddress(m);
        if (address) this.emit({ kind: "address", deleted: m.type === RTM.DELADDR, address });
        return;
      }
      case RTM.NEWROUTE:
      case RTM.DELROUTE: {
        // A new route with our protocol is the echo of our own put: not drift, not worth parsing.
        if (m.type === RTM.NEWROUTE && isOurRouteHeader(m)) return;
        const r = parseRoute(m);
        if (r && isMainTable(r) && r.priority === 0) this.emit({ kind: "route", deleted: m.type === RTM.DELROUTE, value: r.route, ours: isOurRoute(r) });
        return;
      }
      case RTM.NEWNEXTHOP:
      case RTM.DELNEXTHOP: {
        const n = parseNexthop(m);
        const ours = n?.protocol === WEFT_RT_PROTO;
        // A new nexthop of ours is the echo of our own put. Another's, or a deleted one, is a change to
        // the route to the dst its id stands for (nexthop-id.ts).
        if (!n || (ours && m.type === RTM.NEWNEXTHOP)) return;
        const dst = dstOfNexthopId(n.id);
        if (!dst) return;
        const value: Route = n.gateway === undefined ? { dst, oif: n.oif, onlink: n.onlink } : { dst, gateway: n.gateway, oif: n.oif, onlink: n.onlink };
        this.emit({ kind: "route", deleted: m.type === RTM.DELNEXTHOP, value, ours });
        return;
      }
      case RTM.NEWNEIGH:
      case RTM.DELNEIGH: {
        const h = neighbourHeader(m);
        if (!h || !this.watchedLinks.has(h.index)) return;
        const n = parseNeighbour(m);
        // A deleted ARP entry is announced without its lladdr (no longer valid); its id is index + IP.
        if (!n || !n.dst) return;
        const deleted = m.type === RTM.DELNEIGH;
        if (n.family === AF_INET) this.emit({ kind: "neighbour", deleted, value: { index: n.index, ip: n.dst, mac: n.lladdr }, ours: n.permanent });
        else if (n.family === AF_BRIDGE && n.lladdr) this.emit({ kind: "fdb", deleted, value: { index: n.index, mac: n.lladdr, dst: n.dst }, ours: n.permanent });
        return;
      }
    }
  }

  /**
   * Stops route and neighbour notifications (links and addresses still come) until the returned
   * function is called, which then reports a "lost" event: whatever changed meanwhile is found by the
   * pass that follows. For bulk passes, whose own thousands of echoes would cost more to read than
   * one more pass.
   */
  mute(): () => void {
    if (this.muted || !this.sock) return () => undefined;
    this.muted = true;
    const s = this.sock;
    try { for (const g of OBJECT_GROUPS) s.dropMembership(g); } catch { /* a broken socket is reopened anyway */ }
    return () => {
      this.muted = false;
      if (this.sock === s) {
        try { for (const g of OBJECT_GROUPS) s.addMembership(g); } catch { /* reopened with them below */ }
      }
      this.emit({ kind: "lost", why: "muted" });
    };
  }

  close(): void {
    if (this.reopen) clearTimeout(this.reopen);
    this.reopen = undefined;
    const s = this.sock;
    this.sock = undefined;
    // Not inside a binding callback (close() may run in a microtask of one): the next turn.
    if (s) setImmediate(() => { try { s.close(); } catch { /* already closed */ } });
  }
}
