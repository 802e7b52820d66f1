/* Shared declarations of bale-init: the guest's static init and agent. See guest/README.md. */
#ifndef BALE_COMMON_H
#define BALE_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The agent version the host records in bundle manifests (`bale-init --version` prints it). */
#define BALE_AGENT_VERSION "0.1.0"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- util.c ---- */

/* Where "bale-init: ..." lines go: the console in the VM, stdout or a file on the host. */
extern int g_console_fd;
/* Print one line "bale-init: <msg>\n" to the console with a single write(), so lines from the
 * init and from the image's processes never interleave mid-line. */
void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Like say() but only when `bale.debug` is on the kernel command line (boot timings). */
extern int g_debug;
void debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Milliseconds on CLOCK_MONOTONIC (timers, deadlines, boot timings). */
int64_t now_ms(void);

void *xmalloc(size_t n);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
/* Free a NULL-terminated array of strings and the array itself. */
void strv_free(char **v);
size_t strv_len(char *const *v);
/* A new vector: `base` with entries of `extra` replacing those of the same name ("K=V"). */
char **env_merge(char *const *base, char *const *extra);

/* Read a whole file of at most `max` bytes into a NUL-terminated buffer. 0 or -errno
 * (-EFBIG when larger than max). */
int read_file(const char *path, size_t max, char **out, size_t *len);
/* Write all bytes, retrying on EINTR and short writes. 0 or -errno. */
int write_all(int fd, const void *buf, size_t n);
/* Create a file with `content` at `path` through a temporary name and rename(), so the image's
 * file (or a symlink there) is replaced, never written through. 0 or -errno. */
int replace_file(const char *path, const char *content, mode_t mode);
int mkdir_p(const char *path, mode_t mode);

/* Kernel command line: the value of the last `key=value`, "" for a bare `key`, NULL if absent.
 * Quotes are handled as the kernel does ("a b" keeps the space, the quotes are dropped). */
const char *cmdline_get(const char *cmdline, const char *key, char *buf, size_t bufsz);

/* base64 (standard or URL alphabet, padding optional) into a malloc'd NUL-terminated buffer. */
int base64_decode(const char *in, char **out, size_t *outlen);

/* A small growable buffer for building JSON replies. */
struct jw {
	char *buf;
	size_t len, cap;
};
void jw_raw(struct jw *w, const char *s);
void jw_str(struct jw *w, const char *s); /* quoted and escaped */
void jw_int(struct jw *w, long long v);
void jw_free(struct jw *w);

/* ---- proc.c: starting processes as the image's users ---- */

struct spawn_req {
	char **argv;      /* required, argv[0] is looked up in PATH of `env` when it has no '/' */
	char **env;       /* "K=V" entries; PATH and HOME are added when absent */
	const char *cwd;  /* NULL = "/" */
	const char *user; /* NULL or "" = root; name, uid, uid:gid, name:group */
	int fd_in, fd_out, fd_err; /* become the child's 0, 1, 2 */
	int die_with_parent;       /* PR_SET_PDEATHSIG: only when bale-init is not PID 1 */
};
/* fork() and exec; setup failures in the child print one line on its stderr and exit 126
 * (127 when the program does not exist), like a shell. Returns the pid or -errno. */
pid_t spawn_process(const struct spawn_req *r);
/* Default PATH when the image config has none (the one Docker uses). */
#define DEFAULT_PATH "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

/* ---- stage1.c / stage2.c ---- */

/* stage2_args: extra arguments for /.bale/init (host testing passes its flags through). */
int stage1_main(const char *cmdline_override, char *const stage2_args[]);

struct stage2_opts {
	const char *config_path;   /* default /.bale/config.json */
	const char *cmdline;       /* NULL = read /proc/cmdline */
	const char *agent_listen;  /* unix socket path instead of the virtio port(s) */
	const char *console;       /* NULL = /dev/console, "-" = stdout */
	int agent_only;            /* no main process: serve the agent until shutdown */
	int no_system;             /* no mounts, hostname, /etc files, network */
	int no_poweroff;           /* exit with the main's status instead of powering off */
};
int stage2_main(const struct stage2_opts *o);

/* Power the machine off; never returns. Falls back to a reboot (QEMU runs with -no-reboot, so
 * either ends the VM) and finally to sleeping forever, because PID 1 must never exit. */
void power_off(void) __attribute__((noreturn));

#endif
