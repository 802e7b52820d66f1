/*
 * Stage 2: PID 1 inside the image (/.bale/init). Prepares the system (mounts, hostname,
 * /etc/hosts, /etc/resolv.conf, lo and eth0), runs the image's entrypoint as its config says,
 * serves the agent, and when the entrypoint exits stops everything and powers off, reporting
 * the exit status on the console and to the host.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "common.h"
#include "json.h"
#include "loop.h"
#include "net.h"

/* A config is a few KB; the cap only refuses a corrupt or hostile file before it costs memory. */
#define CONFIG_MAX (1024 * 1024)
/* QEMU user-mode networking's fixed addresses (slirp defaults). */
#define DEFAULT_IP "10.0.2.15/24"
#define DEFAULT_GW "10.0.2.2"
#define DEFAULT_DNS "10.0.2.3"
#define DEFAULT_HOSTNAME "bale"

struct image_config {
	char **entrypoint, **cmd, **env;
	char *user, *workdir, *hostname;
	int has_entrypoint, has_cmd;
};

static void config_free(struct image_config *c)
{
	strv_free(c->entrypoint);
	strv_free(c->cmd);
	strv_free(c->env);
	free(c->user);
	free(c->workdir);
	free(c->hostname);
	memset(c, 0, sizeof *c);
}

/* Parse the injected config (or a command-line overlay of the same shape). Absent or null
 * members stay unset; a member of the wrong type is an error naming it. */
static int config_parse(const char *buf, size_t len, struct image_config *c, char *err, size_t errsz)
{
	memset(c, 0, sizeof *c);
	int max = (int)(len / 2 + 2);
	struct jtok *t = xmalloc(sizeof *t * (size_t)max);
	int rc = -1;
	if (json_parse(buf, len, t, max) < 1 || t[0].type != J_OBJ) {
		snprintf(err, errsz, "not a JSON object");
		goto out;
	}
	static const char *const vecs[] = { "entrypoint", "cmd", "env" };
	char ***vdst[] = { &c->entrypoint, &c->cmd, &c->env };
	for (size_t i = 0; i < ARRAY_LEN(vecs); i++) {
		int v = json_get(buf, t, 0, vecs[i]);
		if (v < 0)
			continue;
		*vdst[i] = json_strv(buf, t, v);
		if (!*vdst[i]) {
			snprintf(err, errsz, "\"%s\": expected an array of strings", vecs[i]);
			goto out;
		}
		if (i == 0)
			c->has_entrypoint = 1;
		if (i == 1)
			c->has_cmd = 1;
	}
	static const char *const strs[] = { "user", "workdir", "hostname" };
	char **sdst[] = { &c->user, &c->workdir, &c->hostname };
	for (size_t i = 0; i < ARRAY_LEN(strs); i++) {
		int v = json_get(buf, t, 0, strs[i]);
		if (v < 0 || t[v].type == J_NULL)
			continue;
		*sdst[i] = json_strdup(buf, t, v);
		if (!*sdst[i]) {
			snprintf(err, errsz, "\"%s\": expected a string", strs[i]);
			goto out;
		}
	}
	rc = 0;
out:
	free(t);
	if (rc)
		config_free(c);
	return rc;
}

/* Apply an overlay the way `docker run` applies its flags: a new entrypoint drops the image's
 * cmd unless a cmd comes with it; env entries replace those of the same name. */
static void config_overlay(struct image_config *c, struct image_config *o)
{
	if (o->has_entrypoint) {
		strv_free(c->entrypoint);
		c->entrypoint = o->entrypoint;
		o->entrypoint = NULL;
		strv_free(c->cmd);
		c->cmd = NULL;
	}
	if (o->has_cmd) {
		strv_free(c->cmd);
		c->cmd = o->cmd;
		o->cmd = NULL;
	}
	if (o->env) {
		char **m = env_merge(c->env, o->env);
		strv_free(c->env);
		c->env = m;
	}
	char **src[] = { &o->user, &o->workdir, &o->hostname };
	char **dst[] = { &c->user, &c->workdir, &c->hostname };
	for (size_t i = 0; i < ARRAY_LEN(src); i++)
		if (*src[i]) {
			free(*dst[i]);
			*dst[i] = *src[i];
			*src[i] = NULL;
		}
}

/* ---------------------------------------------------------------- system setup */

static int is_mountpoint(const char *path)
{
	char parent[4096];
	struct stat a, b;
	if (snprintf(parent, sizeof parent, "%s/..", path) >= (int)sizeof parent)
		return 0;
	if (stat(path, &a) < 0 || stat(parent, &b) < 0)
		return 0;
	return a.st_dev != b.st_dev || a.st_ino == b.st_ino;
}

static int root_is_readonly(void)
{
	struct statvfs sv;
	return statvfs("/", &sv) == 0 && (sv.f_flag & ST_RDONLY);
}

static void mount_if_absent(const char *target, const char *type, unsigned long flags, const char *data)
{
	if (mkdir(target, 0755) < 0 && errno != EEXIST) {
		say("mount %s: %s", target, strerror(errno));
		return;
	}
	if (is_mountpoint(target))
		return;
	if (mount(type, target, type, flags, data) < 0)
		say("mount %s (%s): %s", target, type, strerror(errno));
}

static void mount_system(void)
{
	int ro = root_is_readonly();
	mount_if_absent("/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_if_absent("/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_if_absent("/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	/* gid 5 is "tty" in Debian, Alpine and busybox images, as every container runtime assumes. */
	mount_if_absent("/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5");
	mount_if_absent("/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	mount_if_absent("/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755");
	/* On a writable root /tmp is the image's own directory (as in Docker); on a read-only root
	 * programs still need somewhere to write. */
	if (ro)
		mount_if_absent("/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777");
	if (access("/sys/fs/cgroup", F_OK) == 0 && !is_mountpoint("/sys/fs/cgroup"))
		(void)mount("cgroup2", "/sys/fs/cgroup", "cgroup2", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	/* devtmpfs has no /dev/fd and friends; programs and shells expect them. */
	static const char *const links[][2] = {
		{ "/proc/self/fd", "/dev/fd" },
		{ "/proc/self/fd/0", "/dev/stdin" },
		{ "/proc/self/fd/1", "/dev/stdout" },
		{ "/proc/self/fd/2", "/dev/stderr" },
	};
	for (size_t i = 0; i < ARRAY_LEN(links); i++)
		(void)symlink(links[i][0], links[i][1]);
}

/* Write /etc/<name>. On a read-only root the file is made under /run and bind-mounted over the
 * image's, which then has to exist. */
static void write_etc(const char *name, const char *content)
{
	char path[256];
	snprintf(path, sizeof path, "/etc/%s", name);
	(void)mkdir("/etc", 0755);
	int e = replace_file(path, content, 0644);
	if (e == -EROFS) {
		char alt[256];
		(void)mkdir("/run/bale", 0755);
		snprintf(alt, sizeof alt, "/run/bale/%s", name);
		e = replace_file(alt, content, 0644);
		if (!e && mount(alt, path, NULL, MS_BIND, NULL) < 0)
			e = -errno;
	}
	if (e)
		say("%s: %s", path, strerror(-e));
}

static int is_loopback(const char *ip)
{
	struct in_addr a4;
	struct in6_addr a6;
	if (inet_pton(AF_INET, ip, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (inet_pton(AF_INET6, ip, &a6) == 1)
		return IN6_IS_ADDR_LOOPBACK(&a6);
	return 0;
}

static void setup_network(const char *cmdline, const char *hostname)
{
	char ipbuf[64], gwbuf[64], dnsbuf[256];
	const char *ip = cmdline_get(cmdline, "bale.ip", ipbuf, sizeof ipbuf);
	const char *gw = cmdline_get(cmdline, "bale.gw", gwbuf, sizeof gwbuf);
	const char *dns = cmdline_get(cmdline, "bale.dns", dnsbuf, sizeof dnsbuf);
	if (!ip)
		ip = DEFAULT_IP;
	if (!gw)
		gw = DEFAULT_GW;
	if (!dns)
		dns = DEFAULT_DNS;

	int e = net_loopback_up();
	if (e)
		say("lo: %s", strerror(-e));

	char addr_text[INET_ADDRSTRLEN] = "127.0.1.1";
	if (strcmp(ip, "none") != 0) {
		struct in_addr addr, gwa;
		int prefix;
		if (net_parse_cidr(ip, &addr, &prefix) < 0) {
			say("bale.ip=%s: expected A.B.C.D/N; eth0 left down", ip);
		} else if (*gw && inet_pton(AF_INET, gw, &gwa) != 1) {
			say("bale.gw=%s: expected A.B.C.D; eth0 left down", gw);
		} else {
			e = net_configure("eth0", addr, prefix, *gw ? &gwa : NULL);
			if (e == -ENODEV)
				say("eth0: no such device; only loopback networking");
			else if (e)
				say("eth0: %s", strerror(-e));
			else
				inet_ntop(AF_INET, &addr, addr_text, sizeof addr_text);
		}
	}

	char hosts[512];
	snprintf(hosts, sizeof hosts,
		 "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", addr_text, hostname);
	write_etc("hosts", hosts);

	/* A loopback resolver (systemd-resolved's 127.0.0.53, a dnsmasq on 127.0.0.1) is never
	 * running in the VM; writing one would break every lookup. */
	char resolv[512] = "", list[256];
	size_t off = 0;
	snprintf(list, sizeof list, "%s", dns);
	for (char *save = NULL, *one = strtok_r(list, ",", &save); one; one = strtok_r(NULL, ",", &save)) {
		if (is_loopback(one)) {
			say("bale.dns: %s is a loopback address; not used", one);
			continue;
		}
		off += (size_t)snprintf(resolv + off, sizeof resolv - off, "nameserver %s\n", one);
		if (off >= sizeof resolv)
			break;
	}
	if (!resolv[0])
		snprintf(resolv, sizeof resolv, "nameserver %s\n", DEFAULT_DNS);
	write_etc("resolv.conf", resolv);
}

/* ---------------------------------------------------------------- teardown */

/* Undo mountinfo's octal escapes (\040 for a space) in place. */
static void unescape(char *f)
{
	char *o = f;
	for (char *p = f; *p; p++) {
		if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' && p[3] >= '0' && p[3] <= '7') {
			*o++ = (char)((p[1] - '0') << 6 | (p[2] - '0') << 3 | (p[3] - '0'));
			p += 3;
		} else {
			*o++ = *p;
		}
	}
	*o = 0;
}

/* Mount points of block-device filesystems from /proc/self/mountinfo, in mount order, and
 * whether "/" is one of them. Virtual filesystems (proc, sysfs, tmpfs...) hold nothing to
 * write back, and unmounting each costs an RCU grace period, so they are left alone. */
static char **disk_mounts(int *root_listed)
{
	char *buf;
	*root_listed = 0;
	/* 1 MiB: thousands of mounts; a VM has a dozen. */
	if (read_file("/proc/self/mountinfo", 1024 * 1024, &buf, NULL) < 0)
		return NULL;
	size_t n = 0, cap = 16;
	char **v = xmalloc(sizeof(char *) * cap);
	for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		/* id parent major:minor root MOUNTPOINT options [optional...] - FSTYPE SOURCE super */
		char *f[5], *p = line;
		int k = 0;
		for (; k < 5 && p; k++) {
			f[k] = p;
			p = strchr(p, ' ');
			if (p)
				*p++ = 0;
		}
		char *sep = p ? strstr(p, " - ") : NULL;
		if (k < 5 || !sep)
			continue;
		char *source = strchr(sep + 3, ' ');
		if (!source)
			continue;
		source++;
		char *mp = f[4];
		unescape(mp);
		if (strncmp(source, "/dev/", 5) != 0)
			continue;
		if (strcmp(mp, "/") == 0) {
			*root_listed = 1;
			continue;
		}
		if (n + 1 >= cap)
			v = xrealloc(v, sizeof(char *) * (cap *= 2));
		v[n++] = xstrdup(mp);
	}
	v[n] = NULL;
	free(buf);
	return v;
}

static void teardown_mounts(void)
{
	sync();
	int root_listed;
	char **m = disk_mounts(&root_listed);
	/* Innermost first. */
	for (size_t i = strv_len(m); i-- > 0;)
		(void)umount2(m[i], MNT_DETACH);
	strv_free(m);
	/* "/" cannot be unmounted while we run from it: make it read-only, which on ext4 also
	 * writes back and closes the journal, so the disk is clean at power-off. Only when "/" is
	 * a mount of its own: in a test's chroot it is a directory of the host's filesystem,
	 * whose superblock must not be touched. */
	if (root_listed && mount(NULL, "/", NULL, MS_REMOUNT | MS_RDONLY, NULL) < 0 && errno != EBUSY)
		say("remount / read-only: %s", strerror(errno));
	sync();
}

void power_off(void)
{
	/* Only ever as PID 1 (the VM's, or a test's PID namespace's, where the kernel turns
	 * reboot() into killing that namespace's init). Anywhere else this would be the host. */
	if (getpid() != 1)
		_exit(1);
	sync();
	(void)reboot(RB_POWER_OFF);
	/* No ACPI power-off: a reset also ends the VM, since QEMU runs with -no-reboot. */
	(void)reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

/* ---------------------------------------------------------------- main */

static int open_console(const char *path)
{
	if (path && strcmp(path, "-") == 0)
		return 1;
	int fd = open(path ? path : "/dev/console", O_WRONLY | O_NOCTTY | O_CLOEXEC | (path ? O_CREAT | O_APPEND : 0), 0644);
	return fd >= 0 ? fd : 2;
}

static void ensure_std_fds(void)
{
	/* The kernel gives PID 1 the console as 0, 1, 2 only if it can open it; a pipe or file we
	 * create must never land on 0-2 and be mistaken for them. */
	for (int fd = 0; fd < 3; fd++)
		if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0)
			(void)open("/", O_RDONLY);
}

static int load_config(const char *path, const char *cmdline, struct image_config *cfg)
{
	char *buf = NULL, err[256];
	size_t len;
	int e = read_file(path, CONFIG_MAX, &buf, &len);
	if (e) {
		say("%s: %s", path, e == -EFBIG ? "larger than 1 MiB" : strerror(-e));
		return -1;
	}
	if (config_parse(buf, len, cfg, err, sizeof err) < 0) {
		say("%s: %s", path, err);
		free(buf);
		return -1;
	}
	free(buf);

	/* bale.run=<base64url JSON>: the same shape as the config, applied over it (`bale runtime
	 * boot -e K=V -- CMD...`). Base64 because the kernel command line splits on spaces. */
	char run[4096];
	if (cmdline_get(cmdline, "bale.run", run, sizeof run)) {
		char *json;
		size_t jlen;
		struct image_config o;
		if (base64_decode(run, &json, &jlen) < 0) {
			say("bale.run: not base64");
			return -1;
		}
		if (config_parse(json, jlen, &o, err, sizeof err) < 0) {
			say("bale.run: %s", err);
			free(json);
			return -1;
		}
		free(json);
		config_overlay(cfg, &o);
		config_free(&o);
	}
	return 0;
}

static pid_t start_main(const struct image_config *cfg, int console, int die_with_parent)
{
	size_t ne = strv_len(cfg->entrypoint), nc = strv_len(cfg->cmd);
	if (ne + nc == 0) {
		say("the image config has neither entrypoint nor cmd: nothing to run");
		return -ENOENT;
	}
	char **argv = xmalloc(sizeof(char *) * (ne + nc + 1));
	for (size_t i = 0; i < ne; i++)
		argv[i] = cfg->entrypoint[i];
	for (size_t i = 0; i < nc; i++)
		argv[ne + i] = cfg->cmd[i];
	argv[ne + nc] = NULL;
	/* Docker creates a missing working directory; do the same (as root, before the switch). */
	if (cfg->workdir && *cfg->workdir && access(cfg->workdir, F_OK) < 0)
		(void)mkdir_p(cfg->workdir, 0755);
	int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	struct spawn_req r = {
		.argv = argv,
		.env = cfg->env,
		.cwd = cfg->workdir,
		.user = cfg->user,
		.fd_in = devnull >= 0 ? devnull : 0,
		.fd_out = console,
		.fd_err = console,
		.die_with_parent = die_with_parent,
	};
	pid_t pid = spawn_process(&r);
	if (devnull >= 0)
		close(devnull);
	free(argv);
	return pid;
}

int stage2_main(const struct stage2_opts *o)
{
	int pid1 = getpid() == 1;
	ensure_std_fds();
	if (!o->no_system)
		mount_system();
	int64_t t_mounted = now_ms();
	/* Without system duties we are on a host: never its /dev/console unless asked. */
	g_console_fd = open_console(o->console ? o->console : o->no_system ? "-" : NULL);

	char *cmdline = NULL;
	if (o->cmdline)
		cmdline = xstrdup(o->cmdline);
	else if (read_file("/proc/cmdline", 4096, &cmdline, NULL) < 0)
		cmdline = xstrdup("");
	char flag[64];
	g_debug = cmdline_get(cmdline, "bale.debug", flag, sizeof flag) != NULL;
	debug("stage 2 mounts done at %lld ms", (long long)t_mounted);
	int agent_only = o->agent_only ||
			 (cmdline_get(cmdline, "bale.main", flag, sizeof flag) && strcmp(flag, "none") == 0);

	struct image_config cfg;
	memset(&cfg, 0, sizeof cfg);
	int config_ok = 1;
	const char *config_path = o->config_path ? o->config_path : "/.bale/config.json";
	if (!(agent_only && access(config_path, F_OK) < 0))
		config_ok = load_config(config_path, cmdline, &cfg) == 0;

	if (!o->no_system) {
		char hbuf[256];
		const char *hostname = cmdline_get(cmdline, "bale.hostname", hbuf, sizeof hbuf);
		if (!hostname || !*hostname)
			hostname = cfg.hostname && *cfg.hostname ? cfg.hostname : DEFAULT_HOSTNAME;
		if (sethostname(hostname, strlen(hostname)) < 0)
			say("hostname %s: %s", hostname, strerror(errno));
		setup_network(cmdline, hostname);
		debug("network at %lld ms", (long long)now_ms());
	}

	int e = loop_init(pid1, !pid1);
	if (e) {
		say("signalfd: %s", strerror(-e));
		if (pid1)
			power_off();
		return 1;
	}
	g_image.env = cfg.env;
	g_image.user = cfg.user;
	g_image.workdir = cfg.workdir;
	if (o->agent_listen) {
		e = agent_listen(o->agent_listen);
		if (e)
			say("agent: %s: %s", o->agent_listen, strerror(-e));
	} else if (agent_open_vports() == 0) {
		say("agent: no virtio port named org.bale.agent; the host cannot exec into this VM");
	}
	debug("agent ready at %lld ms", (long long)now_ms());

	if (!agent_only) {
		pid_t pid = config_ok ? start_main(&cfg, g_console_fd, !pid1) : -EINVAL;
		if (pid > 0) {
			debug("main process is pid %d", (int)pid);
			loop_set_main(pid);
		} else {
			/* No config, or nothing to run: the statuses a shell gives, 126 "cannot be
			 * executed" and 127 "not found", as a wait status (code in bits 8-15). */
			loop_set_main_failed((pid == -ENOENT ? 127 : 126) << 8);
		}
	}

	e = loop_run();
	if (e)
		say("event loop: %s", strerror(-e));

	int status = 0, code = 0;
	if (lifecycle_main_status(&status))
		code = WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
	debug("shutdown sequence done at %lld ms", (long long)now_ms());
	if (pid1 && !o->no_system)
		teardown_mounts();
	debug("unmounted at %lld ms", (long long)now_ms());
	if (pid1 && !o->no_poweroff)
		power_off();
	free(cmdline);
	config_free(&cfg);
	return code;
}
