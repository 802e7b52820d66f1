/*
 * Network bring-up without netlink or any tool from the image: the classic ioctls are enough for
 * one address and a default route. QEMU user networking: guest 10.0.2.15/24, gateway 10.0.2.2,
 * DNS 10.0.2.3 (the kernel command line can say otherwise, see stage2.c).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common.h"
#include "net.h"

static int if_up(int s, const char *ifname)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		return -errno;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		return -errno;
	return 0;
}

static void set_sin(struct sockaddr *sa, struct in_addr a)
{
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr = a;
	memcpy(sa, &sin, sizeof sin);
}

int net_parse_cidr(const char *cidr, struct in_addr *addr, int *prefix)
{
	char buf[64];
	if (snprintf(buf, sizeof buf, "%s", cidr) >= (int)sizeof buf)
		return -EINVAL;
	char *slash = strchr(buf, '/');
	*prefix = 24;
	if (slash) {
		*slash = 0;
		char *end;
		long p = strtol(slash + 1, &end, 10);
		if (*end || end == slash + 1 || p < 0 || p > 32)
			return -EINVAL;
		*prefix = (int)p;
	}
	return inet_pton(AF_INET, buf, addr) == 1 ? 0 : -EINVAL;
}

int net_loopback_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	/* Bringing lo up is enough: the kernel gives it 127.0.0.1/8 and ::1 itself. */
	int e = if_up(s, "lo");
	close(s);
	return e;
}

int net_configure(const char *ifname, struct in_addr addr, int prefix, const struct in_addr *gw)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -errno;
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", ifname);
	int e = 0;
	struct in_addr mask = { .s_addr = htonl(prefix ? 0xffffffffu << (32 - prefix) : 0) };
	set_sin(&ifr.ifr_addr, addr);
	if (ioctl(s, SIOCSIFADDR, &ifr) < 0)
		e = -errno;
	set_sin(&ifr.ifr_netmask, mask);
	if (!e && ioctl(s, SIOCSIFNETMASK, &ifr) < 0)
		e = -errno;
	if (!e)
		e = if_up(s, ifname);
	if (!e && gw) {
		struct rtentry rt;
		memset(&rt, 0, sizeof rt);
		struct in_addr any = { .s_addr = INADDR_ANY };
		set_sin(&rt.rt_dst, any);
		set_sin(&rt.rt_genmask, any);
		set_sin(&rt.rt_gateway, *gw);
		rt.rt_flags = RTF_UP | RTF_GATEWAY;
		rt.rt_dev = (char *)ifname;
		if (ioctl(s, SIOCADDRT, &rt) < 0 && errno != EEXIST)
			e = -errno;
	}
	close(s);
	return e;
}
