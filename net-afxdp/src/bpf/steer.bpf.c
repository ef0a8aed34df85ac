// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//
// volt-net's XDP program: frames whose destination MAC belongs to a VM go to that VM's
// AF_XDP socket for the queue they arrived on; broadcast and multicast go to the one VM
// that asked for them, if any; everything else (and anything a VM has no socket for on
// that queue) passes to the host's stack, so the host keeps its networking on the NIC.
//
// Maps, updated from user space without reloading the program:
//   volt_macs   MAC (6 bytes, little-endian in a u64) -> VM slot
//   volt_bcast  [0] = slot + 1 of the VM taking broadcast/multicast, 0 for none
//   volt_xsks   slot * VOLT_MAX_QUEUES + rx queue -> AF_XDP socket
//   volt_owner  [0] = pid of the process that attached the program (a crashed owner's
//               program is recognised as stale and replaced by the next one)

#include <linux/bpf.h>

// The few definitions of libbpf's bpf_helpers.h this program uses, so the build needs only
// the kernel's UAPI headers (linux-libc-dev).
#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int(*name)[val]
#define __type(name, val) typeof(val) *name
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;
static long (*bpf_redirect_map)(void *map, __u64 key, __u64 flags) = (void *)BPF_FUNC_redirect_map;

#define VOLT_MAX_VMS 64
#define VOLT_MAX_QUEUES 64

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VOLT_MAX_VMS);
	__type(key, __u64);
	__type(value, __u32);
} volt_macs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} volt_bcast SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, VOLT_MAX_VMS * VOLT_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} volt_xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} volt_owner SEC(".maps");

SEC("xdp")
int volt_steer(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u8 *dst = data;
	__u32 slot, queue = ctx->rx_queue_index;

	if (data + 6 > end)
		return XDP_PASS;
	if (dst[0] & 1) {
		__u32 zero = 0;
		__u32 *b = bpf_map_lookup_elem(&volt_bcast, &zero);

		if (!b || *b == 0)
			return XDP_PASS;
		slot = *b - 1;
	} else {
		__u64 key = 0;
		__u32 *s;

		__builtin_memcpy(&key, dst, 6);
		s = bpf_map_lookup_elem(&volt_macs, &key);
		if (!s)
			return XDP_PASS;
		slot = *s;
	}
	if (slot >= VOLT_MAX_VMS || queue >= VOLT_MAX_QUEUES)
		return XDP_PASS;
	// No socket at that index: the frame passes to the host (the flags' low bits).
	return bpf_redirect_map(&volt_xsks, slot * VOLT_MAX_QUEUES + queue, XDP_PASS);
}

char _license[] SEC("license") = "Dual BSD/GPL";
