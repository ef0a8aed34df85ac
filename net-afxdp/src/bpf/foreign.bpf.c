// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//
// Not volt-net's: an XDP program that passes everything, for the tests that check that
// net-afxdp never replaces somebody else's program.

#include <linux/bpf.h>

#define SEC(name) __attribute__((section(name), used))

SEC("xdp")
int someone_else(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
