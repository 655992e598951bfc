/*
 * lwip-sink: lwIP's TCP on a TUN interface with a discard (RFC 863) listener, for
 * `netstack bench` (the "lwIP" column of bulk kernel → X). Built by the bench with gcc against
 * Debian's liblwip-dev (lwIP 2.1.3, its lwipopts.h: TCP_MSS 1460, TCP_WND 0xFFFF, window
 * scaling, NO_SYS 0 with core locking, malloc-backed pools).
 *
 *   lwip-sink TUN ADDRESS PORT MTU
 *
 * Attaches to (or creates) the TUN interface TUN (IFF_TUN | IFF_NO_PI: bare IPv4 packets, no
 * offloads), gives lwIP's netif the address ADDRESS (point-to-point: everything goes out of
 * the TUN) and MTU, listens on TCP port PORT, discards what arrives (tcp_recved at once, so the
 * window stays open), and closes each connection at the peer's FIN. It prints "ready" once it
 * listens, then runs until stdin closes or SIGTERM; at exit it prints to stderr the connections
 * and bytes it took.
 *
 * Threads: lwIP's tcpip thread (timers), and this program's reader, which reads one packet per
 * read(2) from the TUN straight into a pbuf and hands it to ip_input under the core lock (LOCK_TCPIP_CORE), so a
 * packet costs no message to the tcpip thread. lwIP's output writes one packet per write(2).
 * The kernel's side of the TUN (address, peer route, link up) is the caller's to set.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "lwip/init.h"
#include "lwip/ip.h"
#include "lwip/netif.h"
#include "lwip/pbuf.h"
#include "lwip/tcp.h"
#include "lwip/tcpip.h"

static int tun_fd = -1;
static struct netif tun_netif;
static unsigned short mtu;
static unsigned long long connections, bytes, dropped;
static unsigned char out_buffer[65536]; /* > any tot_len (u16_t) */

/* lwIP's IPv4 output: one packet, one write(2). LWIP_NETIF_TX_SINGLE_PBUF makes p one pbuf;
 * a chain is copied into one buffer all the same. */
static err_t tun_output(struct netif *netif, struct pbuf *p, const ip4_addr_t *next_hop)
{
    (void)netif;
    (void)next_hop;
    const void *data = p->payload;
    if (p->next != NULL) {
        pbuf_copy_partial(p, out_buffer, p->tot_len, 0);
        data = out_buffer;
    }
    if (write(tun_fd, data, p->tot_len) < 0)
        return ERR_IF; /* a full TUN queue (ENOBUFS) drops, as a link would; TCP recovers */
    return ERR_OK;
}

static err_t tun_netif_init(struct netif *netif)
{
    netif->name[0] = 't';
    netif->name[1] = 'n';
    netif->output = tun_output;
    netif->mtu = mtu;
    netif->flags = NETIF_FLAG_LINK_UP;
    return ERR_OK;
}

static err_t discard_recv(void *arg, struct tcp_pcb *pcb, struct pbuf *p, err_t err)
{
    (void)arg;
    (void)err;
    if (p == NULL) {
        /* The peer's FIN: close our side too (discard sends nothing). */
        tcp_recv(pcb, NULL);
        if (tcp_close(pcb) != ERR_OK) {
            tcp_abort(pcb);
            return ERR_ABRT;
        }
        return ERR_OK;
    }
    bytes += p->tot_len;
    tcp_recved(pcb, p->tot_len);
    pbuf_free(p);
    return ERR_OK;
}

static void discard_error(void *arg, err_t err)
{
    (void)arg;
    (void)err; /* the pcb is freed already */
}

static err_t discard_accept(void *arg, struct tcp_pcb *pcb, err_t err)
{
    (void)arg;
    if (err != ERR_OK || pcb == NULL)
        return ERR_VAL;
    connections++;
    tcp_recv(pcb, discard_recv);
    tcp_err(pcb, discard_error);
    return ERR_OK;
}

static int open_tun(const char *name)
{
    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
    strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static void *watch_stdin(void *arg)
{
    (void)arg;
    char c[256];
    while (read(0, c, sizeof c) > 0) {
    }
    fprintf(stderr, "lwip-sink: %llu connections, %llu bytes discarded, %llu packets dropped\n", connections, bytes, dropped);
    _exit(0);
}

static void tcpip_ready(void *arg)
{
    sys_sem_signal((sys_sem_t *)arg);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: lwip-sink TUN ADDRESS PORT MTU\n");
        return 2;
    }
    ip4_addr_t address, netmask, gateway;
    if (!ip4addr_aton(argv[2], &address)) {
        fprintf(stderr, "lwip-sink: '%s' is not an IPv4 address\n", argv[2]);
        return 2;
    }
    int port = atoi(argv[3]);
    int m = atoi(argv[4]);
    if (port <= 0 || port > 65535 || m < 576 || m > 65535) {
        fprintf(stderr, "lwip-sink: bad port '%s' or MTU '%s'\n", argv[3], argv[4]);
        return 2;
    }
    mtu = (unsigned short)m;
    tun_fd = open_tun(argv[1]);
    if (tun_fd < 0) {
        fprintf(stderr, "lwip-sink: cannot attach to TUN %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    sys_sem_t started;
    if (sys_sem_new(&started, 0) != ERR_OK)
        return 1;
    tcpip_init(tcpip_ready, &started);
    sys_sem_wait(&started);

    LOCK_TCPIP_CORE();
    /* Point-to-point: a /32 with the netif as the default route. */
    IP4_ADDR(&netmask, 255, 255, 255, 255);
    ip4_addr_set_zero(&gateway);
    netif_add(&tun_netif, &address, &netmask, &gateway, NULL, tun_netif_init, ip_input);
    netif_set_default(&tun_netif);
    netif_set_up(&tun_netif);
    struct tcp_pcb *listener = tcp_new_ip_type(IPADDR_TYPE_V4);
    err_t err = listener == NULL ? ERR_MEM : tcp_bind(listener, IP4_ADDR_ANY, (u16_t)port);
    if (err == ERR_OK)
        listener = tcp_listen_with_backlog(listener, 16);
    if (err != ERR_OK || listener == NULL) {
        UNLOCK_TCPIP_CORE();
        fprintf(stderr, "lwip-sink: cannot listen on port %d (lwIP error %d)\n", port, err);
        return 1;
    }
    tcp_accept(listener, discard_accept);
    UNLOCK_TCPIP_CORE();

    pthread_t watcher;
    pthread_create(&watcher, NULL, watch_stdin, NULL);
    printf("ready\n");
    fflush(stdout);

    /* Each packet is read straight into a pbuf of MTU bytes (one malloc, no copy), trimmed to
     * its length. */
    struct pbuf *p = NULL;
    for (;;) {
        if (p == NULL && (p = pbuf_alloc(PBUF_RAW, mtu, PBUF_RAM)) == NULL) {
            fprintf(stderr, "lwip-sink: out of memory\n");
            return 1;
        }
        ssize_t n = read(tun_fd, p->payload, mtu);
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            fprintf(stderr, "lwip-sink: TUN read: %s\n", strerror(errno));
            return 1;
        }
        if (n == 0)
            continue;
        pbuf_realloc(p, (u16_t)n);
        LOCK_TCPIP_CORE();
        if (tun_netif.input(p, &tun_netif) != ERR_OK) {
            pbuf_free(p);
            dropped++;
        }
        UNLOCK_TCPIP_CORE();
        p = NULL;
    }
}
