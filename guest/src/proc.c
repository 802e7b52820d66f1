/*
 * Starting a process the way the image's config asks: its user (resolved in the image's own
 * /etc/passwd and /etc/group), environment, working directory and PATH lookup. Used for the
 * entrypoint and for every agent exec, so both behave the same.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "common.h"

/* Supplementary groups beyond this are dropped: 256 is well above what images configure and
 * keeps the list on the stack of the short-lived child. */
#define MAX_GROUPS 256

struct creds {
	uid_t uid;
	gid_t gid;
	gid_t groups[MAX_GROUPS];
	int ngroups;
	char home[1024];
};

static void die_child(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void die_child(int code, const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = snprintf(line, sizeof line, "bale-init: ");
	int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	va_end(ap);
	size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
	if (len > sizeof line - 2)
		len = sizeof line - 2;
	line[len++] = '\n';
	(void)write_all(2, line, len);
	_exit(code);
}

static int parse_id(const char *s, unsigned long *out)
{
	if (!*s)
		return -1;
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	/* 2^32-1 is (uid_t)-1, which setuid() treats as "no change": refuse it. */
	if (errno || *end || v >= 0xffffffffUL || s[0] == '-' || s[0] == '+')
		return -1;
	*out = v;
	return 0;
}

/* Resolve "name", "uid", "uid:gid", "name:group" (and mixes) like Docker/runc: a known user gets
 * its passwd gid, home and /etc/group memberships; an explicit group replaces the primary gid;
 * an unknown numeric uid runs with gid 0 and no supplementary groups. Runs in the child. */
static void resolve_creds(const char *spec, struct creds *c)
{
	char user[256], *group = NULL;
	c->uid = 0;
	c->gid = 0;
	c->ngroups = 0;
	snprintf(c->home, sizeof c->home, "/");
	if (!spec || !*spec)
		spec = "0";
	if (snprintf(user, sizeof user, "%s", spec) >= (int)sizeof user)
		die_child(126, "user %s: name too long", spec);
	char *colon = strchr(user, ':');
	if (colon) {
		*colon = 0;
		group = colon + 1;
	}
	unsigned long num;
	struct passwd *pw;
	errno = 0;
	if (parse_id(user, &num) == 0) {
		pw = getpwuid((uid_t)num);
		c->uid = (uid_t)num;
	} else {
		pw = getpwnam(user);
		if (!pw)
			die_child(126, "user %s: no such user in /etc/passwd", user);
		c->uid = pw->pw_uid;
	}
	if (pw) {
		c->gid = pw->pw_gid;
		if (pw->pw_dir && *pw->pw_dir)
			snprintf(c->home, sizeof c->home, "%s", pw->pw_dir);
		int n = MAX_GROUPS;
		if (getgrouplist(pw->pw_name, pw->pw_gid, c->groups, &n) < 0)
			n = MAX_GROUPS; /* more than fit: keep the first MAX_GROUPS */
		c->ngroups = n;
	}
	if (group) {
		if (parse_id(group, &num) == 0) {
			c->gid = (gid_t)num;
		} else {
			struct group *gr = getgrnam(group);
			if (!gr)
				die_child(126, "group %s: no such group in /etc/group", group);
			c->gid = gr->gr_gid;
		}
	}
}

static int env_has(char **env, const char *name)
{
	size_t n = strlen(name);
	for (char **e = env; e && *e; e++)
		if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
			return 1;
	return 0;
}

/* The child's environment: the request's entries, plus PATH and HOME when absent (Docker does
 * the same), so a config without PATH still finds /bin/sh. */
static char **child_env(char **env, const char *home)
{
	size_t n = strv_len(env);
	char **out = xmalloc(sizeof(char *) * (n + 3));
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		out[k++] = env[i];
	if (!env_has(env, "PATH"))
		out[k++] = "PATH=" DEFAULT_PATH;
	if (!env_has(env, "HOME")) {
		size_t len = strlen(home) + 6;
		char *h = xmalloc(len);
		snprintf(h, len, "HOME=%s", home);
		out[k++] = h;
	}
	out[k] = NULL;
	return out;
}

static void reset_signals(void)
{
	/* PID 1 blocks everything (signals arrive through a signalfd) and ignores SIGPIPE; both
	 * would be inherited across exec, so the child gets the defaults back. */
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = SIG_DFL;
	for (int s = 1; s < _NSIG; s++)
		(void)sigaction(s, &sa, NULL);
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
}

static void move_fd(int from, int to)
{
	if (from == to) {
		/* Already in place: just make sure it survives exec. */
		int fl = fcntl(from, F_GETFD);
		if (fl >= 0)
			(void)fcntl(from, F_SETFD, fl & ~FD_CLOEXEC);
		return;
	}
	if (dup2(from, to) < 0)
		die_child(126, "dup2: %s", strerror(errno));
}

pid_t spawn_process(const struct spawn_req *r)
{
	if (!r->argv || !r->argv[0] || !r->argv[0][0])
		return -EINVAL;
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0)
		return pid;

	/* Child. Everything the agent opened is O_CLOEXEC; only 0, 1, 2 are handed over. The
	 * descriptors are first moved above 2 so that placing one never clobbers another. */
	reset_signals();
	(void)setsid();
	/* On the host (tests, not PID 1) the children must not outlive a killed bale-init. */
	if (r->die_with_parent)
		(void)prctl(PR_SET_PDEATHSIG, SIGKILL);
	int in = fcntl(r->fd_in, F_DUPFD_CLOEXEC, 3);
	int out = fcntl(r->fd_out, F_DUPFD_CLOEXEC, 3);
	int err = fcntl(r->fd_err, F_DUPFD_CLOEXEC, 3);
	if (in < 0 || out < 0 || err < 0)
		_exit(126);
	move_fd(in, 0);
	move_fd(out, 1);
	move_fd(err, 2);

	struct creds c;
	resolve_creds(r->user, &c);
	char **env = child_env(r->env, c.home);
	const char *cwd = r->cwd && *r->cwd ? r->cwd : "/";
	if (chdir(cwd) < 0)
		die_child(126, "cwd %s: %s", cwd, strerror(errno));
	if (setgroups((size_t)c.ngroups, c.groups) < 0)
		die_child(126, "setgroups: %s", strerror(errno));
	if (setgid(c.gid) < 0)
		die_child(126, "setgid %u: %s", (unsigned)c.gid, strerror(errno));
	if (setuid(c.uid) < 0)
		die_child(126, "setuid %u: %s", (unsigned)c.uid, strerror(errno));

	/* execvp() searches the PATH of the environment it runs with; point it at the child's. */
	environ = env;
	execvp(r->argv[0], r->argv);
	int e = errno;
	die_child(e == ENOENT || e == ENOTDIR ? 127 : 126, "exec %s: %s", r->argv[0], strerror(e));
}
