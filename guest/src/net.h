/* IPv4 bring-up of lo and one interface (net.c). */
#ifndef BALE_NET_H
#define BALE_NET_H

#include <netinet/in.h>

/* "A.B.C.D/N" (N defaults to 24). 0 or -EINVAL. */
int net_parse_cidr(const char *cidr, struct in_addr *addr, int *prefix);
int net_loopback_up(void);
/* Address, netmask, up, and a default route through gw when gw is not NULL. 0 or -errno. */
int net_configure(const char *ifname, struct in_addr addr, int prefix, const struct in_addr *gw);

#endif
