// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// earshot_xdp: steer the engine's RTP/RTCP UDP traffic to AF_XDP sockets.
//
// A frame is redirected to XSKMAP[rx_queue_index] exactly when it is
//   Ethernet [+ one 802.1Q / 802.1ad tag]
//   + IPv4 (any IHL, not a fragment) or IPv6 (next header UDP directly)
//   + UDP whose destination port lies in one of the configured port ranges
//   + whose destination address is one of the engine's local addresses
//     (or any address when the loader sets EARSHOT_CFG_ANY_ADDR).
// Everything else -- ARP, ICMP, TCP, fragments, extension headers, other ports and
// anything truncated -- goes to the kernel with XDP_PASS, so the host keeps working
// whatever the engine does. The program never drops.
//
// Maps (filled by the loader in engine/afxdp, never by the program):
//   earshot_config  ARRAY[1]          port ranges + flags
//   earshot_addrs   HASH addr -> u8   local addresses, IPv4 stored v4-mapped (::ffff:a.b.c.d)
//   earshot_xsks    XSKMAP            queue index -> AF_XDP socket
//   earshot_stats   PERCPU_ARRAY u64  one counter per verdict reason (enum below)
//
// The layouts below are mirrored by engine/afxdp/src/program.rs; change both together.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define EARSHOT_MAX_PORT_RANGES 16
#define EARSHOT_MAX_ADDRS 64
#define EARSHOT_MAX_QUEUES 256

// Match UDP to any destination address (engine bound to the wildcard address).
#define EARSHOT_CFG_ANY_ADDR 1u

struct earshot_port_range {
	__u16 first; // host byte order, inclusive
	__u16 last;  // host byte order, inclusive
};

struct earshot_config {
	__u32 flags;
	__u32 range_count; // ranges[0..range_count] are valid
	struct earshot_port_range ranges[EARSHOT_MAX_PORT_RANGES];
};

// Local address key: 16 bytes of IPv6, IPv4 as ::ffff:a.b.c.d.
struct earshot_addr {
	__u8 bytes[16];
};

// Counter indices. Exactly one counter is incremented per frame.
enum earshot_stat {
	EARSHOT_REDIRECTED = 0,
	EARSHOT_PASS_NOT_IP = 1,        // ARP, LLDP, ... (not IPv4/IPv6 after the VLAN tag)
	EARSHOT_PASS_NOT_UDP = 2,       // ICMP, TCP, IPv6 extension headers, ...
	EARSHOT_PASS_FRAGMENT = 3,      // IPv4 MF set or fragment offset != 0
	EARSHOT_PASS_NOT_OUR_PORT = 4,  // UDP, destination port outside every range
	EARSHOT_PASS_NOT_OUR_ADDR = 5,  // UDP in range, destination not a local address
	EARSHOT_PASS_TRUNCATED = 6,     // a header runs past the end of the frame
	EARSHOT_PASS_NO_XSK = 7,        // matched, but no socket on this queue
	EARSHOT_PASS_NO_CONFIG = 8,     // config map unreadable (cannot happen for ARRAY)
	EARSHOT_STAT_COUNT = 9,
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct earshot_config);
} earshot_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, EARSHOT_MAX_ADDRS);
	__type(key, struct earshot_addr);
	__type(value, __u8);
} earshot_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, EARSHOT_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} earshot_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, EARSHOT_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} earshot_stats SEC(".maps");

struct vlan_tag {
	__be16 tci;
	__be16 encapsulated_proto;
};

static __always_inline int count(enum earshot_stat stat, int verdict)
{
	__u32 key = stat;
	__u64 *value = bpf_map_lookup_elem(&earshot_stats, &key);
	if (value)
		*value += 1; // per-CPU slot: no atomics needed
	return verdict;
}

static __always_inline int port_in_ranges(const struct earshot_config *cfg, __u16 port)
{
	// Bounded loop over a fixed maximum: the verifier sees 16 iterations at most.
#pragma unroll
	for (int i = 0; i < EARSHOT_MAX_PORT_RANGES; i++) {
		if ((__u32)i >= cfg->range_count)
			return 0;
		if (port >= cfg->ranges[i].first && port <= cfg->ranges[i].last)
			return 1;
	}
	return 0;
}

SEC("xdp")
int earshot_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return count(EARSHOT_PASS_TRUNCATED, XDP_PASS);

	__u16 proto = eth->h_proto;
	void *l3 = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_tag *tag = l3;
		if ((void *)(tag + 1) > data_end)
			return count(EARSHOT_PASS_TRUNCATED, XDP_PASS);
		proto = tag->encapsulated_proto;
		l3 = tag + 1;
	}

	struct earshot_addr dst = {};
	struct udphdr *udp;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = l3;
		if ((void *)(ip + 1) > data_end)
			return count(EARSHOT_PASS_TRUNCATED, XDP_PASS);
		if (ip->protocol != IPPROTO_UDP)
			return count(EARSHOT_PASS_NOT_UDP, XDP_PASS);
		// MF flag (0x2000) or a non-zero offset (0x1fff): let the kernel reassemble.
		if (ip->frag_off & bpf_htons(0x3fff))
			return count(EARSHOT_PASS_FRAGMENT, XDP_PASS);
		__u32 ihl_bytes = ip->ihl * 4;
		if (ihl_bytes < sizeof(*ip))
			return count(EARSHOT_PASS_TRUNCATED, XDP_PASS);
		udp = l3 + ihl_bytes;
		dst.bytes[10] = 0xff;
		dst.bytes[11] = 0xff;
		__builtin_memcpy(&dst.bytes[12], &ip->daddr, 4);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = l3;
		if ((void *)(ip6 + 1) > data_end)
			return count(EARSHOT_PASS_TRUNCATED, XDP_PASS);
		if (ip6->nexthdr != IPPROTO_UDP)
			return count(EARSHOT_PASS_NOT_UDP, XDP_PASS);
		udp = (void *)(ip6 + 1);
		__builtin_memcpy(dst.bytes, &ip6->daddr, 16);
	} else {
		return count(EARSHOT_PASS_NOT_IP, XDP_PASS);
	}

	if ((void *)(udp + 1) > data_end)
		return count(EARSHOT_PASS_TRUNCATED, XDP_PASS);

	__u32 zero = 0;
	const struct earshot_config *cfg = bpf_map_lookup_elem(&earshot_config, &zero);
	if (!cfg)
		return count(EARSHOT_PASS_NO_CONFIG, XDP_PASS);
	if (!port_in_ranges(cfg, bpf_ntohs(udp->dest)))
		return count(EARSHOT_PASS_NOT_OUR_PORT, XDP_PASS);
	if (!(cfg->flags & EARSHOT_CFG_ANY_ADDR) && !bpf_map_lookup_elem(&earshot_addrs, &dst))
		return count(EARSHOT_PASS_NOT_OUR_ADDR, XDP_PASS);

	// The low bits of flags are the action when the map slot is empty: a queue without a
	// socket hands its traffic to the kernel rather than dropping it.
	long action = bpf_redirect_map(&earshot_xsks, ctx->rx_queue_index, XDP_PASS);
	if (action == XDP_REDIRECT)
		return count(EARSHOT_REDIRECTED, XDP_REDIRECT);
	return count(EARSHOT_PASS_NO_XSK, (int)action);
}

char _license[] SEC("license") = "Dual BSD/GPL";
