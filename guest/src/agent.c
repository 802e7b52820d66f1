/*
 * The agent's connections, frames and sessions. docs/agent-protocol.md is the specification.
 *
 * A connection is a virtio port (or, on the host, an accepted unix socket). Frames from the host
 * are parsed out of a fixed receive buffer; replies and stream data go to a per-connection
 * transmit queue flushed without blocking. Sessions are the long-lived requests: an exec (a
 * process with pipes), a file being read, a file being written. When the host goes away, its
 * sessions are orphaned: their processes keep running, their output is read and dropped.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "common.h"
#include "json.h"
#include "proto.h"

/* One per virtio port the runtime may give (org.bale.agent, org.bale.agent.1, ...), so several
 * host processes can talk to one VM at once; on the host, one per test client. */
#define MAX_CONNS 8
/* Each exec holds up to three pipes and a stdin queue bounded by STREAM_WINDOW; 64 bounds the
 * agent's descriptors and memory (64 x 256 KiB of queued stdin at worst). */
#define MAX_SESSIONS 64
/* Stop producing stream data for a connection while this much is queued for it: the host is not
 * reading, and the queue must not grow without bound. Replies still go out. */
#define TX_HIGH (4 * FRAME_MAX_PAYLOAD)
/* How often a disconnected virtio port is checked when no SIGIO arrives (the port raises SIGIO
 * when the host opens it, so this is only a fallback). */
#define VPORT_RECHECK_MS 250

enum { C_FREE, C_VPORT, C_SOCK, C_LISTEN };

struct conn {
	int kind, fd;
	int up;    /* the host side is connected */
	int hello; /* HELLO done on this connection */
	int resync; /* lost framing: scanning for the next magic */
	unsigned char rx[FRAME_HDR + FRAME_MAX_PAYLOAD];
	size_t rxlen;
	unsigned char *tx;
	size_t txoff, txlen, txcap;
	char name[64];
};

enum { S_FREE, S_EXEC, S_READ, S_WRITE };

struct chunk {
	struct chunk *next;
	size_t len, off;
	unsigned char data[];
};

struct session {
	int kind;
	struct conn *conn; /* NULL once orphaned */
	uint32_t id;
	/* exec */
	pid_t pid;
	int exited, status;
	int out, err, in; /* our ends of the child's pipes, -1 when closed */
	int want_stdin;
	struct chunk *q, *qtail;
	size_t qbytes;
	int in_eof;
	uint32_t credit; /* stdout+stderr bytes we may still send (host acknowledges with ACK) */
	/* files */
	int fd;
	unsigned long long size;
	char *path, *tmp;
	long long mode, uid, gid;
};

struct image_defaults g_image;

static struct conn conns[MAX_CONNS];
static struct session sessions[MAX_SESSIONS];
static int listen_fd = -1;
static unsigned char iobuf[FRAME_MAX_PAYLOAD];
/* Tokens for one request: a payload of n bytes holds at most n/2+2 JSON values. */
static struct jtok toks[FRAME_MAX_PAYLOAD / 2 + 2];
static int64_t vport_recheck_at = -1;

/* ---------------------------------------------------------------- frames out */

static void put32(unsigned char *p, uint32_t v)
{
	p[0] = (unsigned char)(v >> 24);
	p[1] = (unsigned char)(v >> 16);
	p[2] = (unsigned char)(v >> 8);
	p[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void tx_append(struct conn *c, const void *p, size_t n)
{
	if (c->txoff && c->txoff == c->txlen)
		c->txoff = c->txlen = 0;
	if (c->txlen + n > c->txcap) {
		if (c->txoff) {
			memmove(c->tx, c->tx + c->txoff, c->txlen - c->txoff);
			c->txlen -= c->txoff;
			c->txoff = 0;
		}
		if (c->txlen + n > c->txcap) {
			size_t cap = c->txcap ? c->txcap : 4096;
			while (cap < c->txlen + n)
				cap *= 2;
			c->tx = xrealloc(c->tx, cap);
			c->txcap = cap;
		}
	}
	memcpy(c->tx + c->txlen, p, n);
	c->txlen += n;
}

static void send_frame(struct conn *c, int type, uint32_t id, const void *payload, size_t n)
{
	if (!c || !c->up)
		return;
	unsigned char h[FRAME_HDR] = { PROTO_MAGIC0, PROTO_MAGIC1, PROTO_VERSION, (unsigned char)type };
	put32(h + 4, id);
	put32(h + 8, (uint32_t)n);
	tx_append(c, h, sizeof h);
	if (n)
		tx_append(c, payload, n);
}

static void send_json(struct conn *c, int type, uint32_t id, const char *json)
{
	send_frame(c, type, id, json, strlen(json));
}

static const char *errno_name(int e)
{
	switch (e) {
	case ENOENT: return "ENOENT";
	case EACCES: return "EACCES";
	case EPERM: return "EPERM";
	case EEXIST: return "EEXIST";
	case EISDIR: return "EISDIR";
	case ENOTDIR: return "ENOTDIR";
	case EINVAL: return "EINVAL";
	case ENOSPC: return "ENOSPC";
	case EROFS: return "EROFS";
	case ENAMETOOLONG: return "ENAMETOOLONG";
	case ELOOP: return "ELOOP";
	case EBUSY: return "EBUSY";
	case ESRCH: return "ESRCH";
	case EBADMSG: return "EBADMSG";
	case EPROTO: return "EPROTO";
	case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
	case E2BIG: return "E2BIG";
	case EMFILE: return "EMFILE";
	case ENFILE: return "ENFILE";
	case ENOMEM: return "ENOMEM";
	case EAGAIN: return "EAGAIN";
	case ESHUTDOWN: return "ESHUTDOWN";
	case EOVERFLOW: return "EOVERFLOW";
	case EBADF: return "EBADF";
	case EFBIG: return "EFBIG";
	case ETXTBSY: return "ETXTBSY";
	case EXDEV: return "EXDEV";
	default: return "EIO";
	}
}

static void send_error(struct conn *c, uint32_t id, int e, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void send_error(struct conn *c, uint32_t id, int e, const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	struct jw w = { 0 };
	jw_raw(&w, "{\"code\":");
	jw_str(&w, errno_name(e));
	jw_raw(&w, ",\"message\":");
	jw_str(&w, msg);
	jw_raw(&w, "}");
	send_json(c, T_ERROR, id, w.buf);
	jw_free(&w);
}

static void send_u32(struct conn *c, int type, uint32_t id, uint32_t v)
{
	unsigned char b[4];
	put32(b, v);
	send_frame(c, type, id, b, 4);
}

/* "code":N or "signal":N for a wait status. */
static void status_members(struct jw *w, int status)
{
	if (WIFSIGNALED(status)) {
		jw_raw(w, "\"signal\":");
		jw_int(w, WTERMSIG(status));
	} else {
		jw_raw(w, "\"code\":");
		jw_int(w, WIFEXITED(status) ? WEXITSTATUS(status) : 255);
	}
}

static void status_json(struct jw *w, int status)
{
	jw_raw(w, "{");
	status_members(w, status);
	jw_raw(w, "}");
}

/* ---------------------------------------------------------------- sessions */

static struct session *sess_new(struct conn *c, uint32_t id, int kind)
{
	for (int i = 0; i < MAX_SESSIONS; i++) {
		struct session *s = &sessions[i];
		if (s->kind != S_FREE)
			continue;
		memset(s, 0, sizeof *s);
		s->kind = kind;
		s->conn = c;
		s->id = id;
		s->out = s->err = s->in = s->fd = -1;
		s->credit = STREAM_WINDOW;
		return s;
	}
	return NULL;
}

static struct session *sess_find(struct conn *c, uint32_t id)
{
	for (int i = 0; i < MAX_SESSIONS; i++)
		if (sessions[i].kind != S_FREE && sessions[i].conn == c && sessions[i].id == id)
			return &sessions[i];
	return NULL;
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void stdin_drop(struct session *s)
{
	while (s->q) {
		struct chunk *n = s->q->next;
		free(s->q);
		s->q = n;
	}
	s->qtail = NULL;
	s->qbytes = 0;
}

static void sess_free(struct session *s)
{
	close_fd(&s->out);
	close_fd(&s->err);
	close_fd(&s->in);
	close_fd(&s->fd);
	stdin_drop(s);
	if (s->tmp)
		(void)unlink(s->tmp);
	free(s->tmp);
	free(s->path);
	s->kind = S_FREE;
}

/* The host that owned this session went away: keep the process, drop its I/O. */
static void sess_orphan(struct session *s)
{
	s->conn = NULL;
	if (s->kind != S_EXEC) {
		sess_free(s);
		return;
	}
	stdin_drop(s);
	close_fd(&s->in);
}

/* Write queued stdin into the child's pipe and acknowledge what went in. */
static void stdin_flush(struct session *s)
{
	uint32_t acked = 0;
	while (s->q && s->in >= 0) {
		struct chunk *ch = s->q;
		ssize_t w = write(s->in, ch->data + ch->off, ch->len - ch->off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN)
			break;
		if (w < 0) {
			/* EPIPE: the child closed its stdin. Drop the rest but acknowledge it, so the
			 * host's writer is not left waiting for credit that never comes. */
			acked += (uint32_t)s->qbytes;
			stdin_drop(s);
			close_fd(&s->in);
			break;
		}
		ch->off += (size_t)w;
		s->qbytes -= (size_t)w;
		acked += (uint32_t)w;
		if (ch->off == ch->len) {
			s->q = ch->next;
			if (!s->q)
				s->qtail = NULL;
			free(ch);
		}
	}
	if (acked)
		send_u32(s->conn, T_WINDOW, s->id, acked);
	if (!s->q && s->in_eof)
		close_fd(&s->in);
}

static void exec_finish(struct session *s)
{
	if (s->conn) {
		struct jw w = { 0 };
		status_json(&w, s->status);
		send_json(s->conn, T_EXIT, s->id, w.buf);
		jw_free(&w);
	}
	sess_free(s);
}

/* Read one chunk of a child's stdout/stderr. Returns 1 if data or EOF was handled. */
static int exec_read(struct session *s, int *fd, int type)
{
	size_t want = sizeof iobuf;
	if (s->conn) {
		if (s->credit == 0 || s->conn->txlen - s->conn->txoff >= TX_HIGH)
			return 0;
		if (want > s->credit)
			want = s->credit;
	}
	ssize_t r = read(*fd, iobuf, want);
	if (r < 0 && (errno == EAGAIN || errno == EINTR)) {
		if (s->exited) {
			/* The process is gone and its pipe is empty now; whatever a left-behind
			 * grandchild writes later is not part of this exec. */
			close_fd(fd);
			send_frame(s->conn, type, s->id, NULL, 0);
			return 1;
		}
		return 0;
	}
	if (r <= 0) {
		close_fd(fd);
		send_frame(s->conn, type, s->id, NULL, 0);
		return 1;
	}
	if (s->conn) {
		s->credit -= (uint32_t)r;
		send_frame(s->conn, type, s->id, iobuf, (size_t)r);
	}
	return 1;
}

static int read_progress(struct session *s)
{
	if (s->conn->txlen - s->conn->txoff >= TX_HIGH)
		return 0;
	ssize_t r = read(s->fd, iobuf, sizeof iobuf);
	if (r < 0 && (errno == EINTR || errno == EAGAIN))
		return 1;
	if (r < 0) {
		send_error(s->conn, s->id, errno, "%s: %s", s->path, strerror(errno));
		sess_free(s);
		return 0;
	}
	if (r == 0) {
		struct jw w = { 0 };
		jw_raw(&w, "{\"size\":");
		jw_int(&w, (long long)s->size);
		jw_raw(&w, "}");
		send_json(s->conn, T_OK, s->id, w.buf);
		jw_free(&w);
		sess_free(s);
		return 0;
	}
	s->size += (unsigned long long)r;
	send_frame(s->conn, T_DATA, s->id, iobuf, (size_t)r);
	return 1;
}

int agent_progress(void)
{
	int more = 0;
	for (int i = 0; i < MAX_SESSIONS; i++) {
		struct session *s = &sessions[i];
		if (s->kind == S_READ) {
			more |= read_progress(s);
		} else if (s->kind == S_EXEC && s->exited) {
			/* Drain what the process left in its pipes (within the host's credit), then
			 * report the exit: the host sees all output before the status. */
			if (s->out >= 0)
				more |= exec_read(s, &s->out, T_STDOUT);
			if (s->err >= 0)
				more |= exec_read(s, &s->err, T_STDERR);
			if (s->out < 0 && s->err < 0)
				exec_finish(s);
		}
	}
	return more;
}

int agent_child_exited(pid_t pid, int status)
{
	for (int i = 0; i < MAX_SESSIONS; i++) {
		struct session *s = &sessions[i];
		if (s->kind == S_EXEC && !s->exited && s->pid == pid) {
			debug("agent: exec %u: pid %d exited, status 0x%x", s->id, (int)pid, (unsigned)status);
			s->exited = 1;
			s->status = status;
			stdin_drop(s);
			close_fd(&s->in);
			return 1;
		}
	}
	return 0;
}

int agent_session_pids(pid_t *out, int max)
{
	int n = 0;
	for (int i = 0; i < MAX_SESSIONS && n < max; i++)
		if (sessions[i].kind == S_EXEC && !sessions[i].exited)
			out[n++] = sessions[i].pid;
	return n;
}

/* ---------------------------------------------------------------- requests */

static int parse_obj(struct conn *c, uint32_t id, const unsigned char *p, size_t n)
{
	int nt = json_parse((const char *)p, n, toks, (int)ARRAY_LEN(toks));
	if (nt < 1 || toks[0].type != J_OBJ) {
		send_error(c, id, EBADMSG, "payload is not a JSON object");
		return -1;
	}
	return 0;
}

/* An optional string member: absent or null gives NULL; anything else must be a string. */
static int opt_str(struct conn *c, uint32_t id, const char *s, const char *key, char **out)
{
	*out = NULL;
	int v = json_get(s, toks, 0, key);
	if (v < 0 || toks[v].type == J_NULL)
		return 0;
	*out = json_strdup(s, toks, v);
	if (!*out) {
		send_error(c, id, EINVAL, "%s: expected a string without NUL bytes", key);
		return -1;
	}
	return 0;
}

static int opt_int(struct conn *c, uint32_t id, const char *s, const char *key, long long lo, long long hi, long long *out)
{
	int v = json_get(s, toks, 0, key);
	if (v < 0 || toks[v].type == J_NULL)
		return 0;
	if (json_int(s, toks, v, lo, hi, out) < 0) {
		send_error(c, id, EINVAL, "%s: expected an integer in [%lld, %lld]", key, lo, hi);
		return -1;
	}
	return 0;
}

static void req_hello(struct conn *c, uint32_t id, const unsigned char *p, size_t n)
{
	const char *s = (const char *)p;
	long long proto = 0;
	if (parse_obj(c, id, p, n) < 0 || opt_int(c, id, s, "protocol", 0, 1000000, &proto) < 0)
		return;
	if (proto != PROTO_VERSION) {
		send_error(c, id, EPROTONOSUPPORT, "host speaks protocol %lld, this agent speaks %d", proto, PROTO_VERSION);
		return;
	}
	c->hello = 1;
	struct jw w = { 0 };
	jw_raw(&w, "{\"protocol\":");
	jw_int(&w, PROTO_VERSION);
	jw_raw(&w, ",\"agent\":");
	jw_str(&w, BALE_AGENT_VERSION);
	jw_raw(&w, ",\"capabilities\":[\"exec\",\"signal\",\"read-file\",\"write-file\",\"shutdown\",\"main-exit\"]");
	jw_raw(&w, ",\"maxPayload\":");
	jw_int(&w, FRAME_MAX_PAYLOAD);
	jw_raw(&w, ",\"window\":");
	jw_int(&w, STREAM_WINDOW);
	jw_raw(&w, ",\"mainPid\":");
	pid_t mp = lifecycle_main_pid();
	if (mp > 0)
		jw_int(&w, mp);
	else
		jw_raw(&w, "null");
	jw_raw(&w, ",\"mainExit\":");
	int st;
	if (lifecycle_main_status(&st))
		status_json(&w, st);
	else
		jw_raw(&w, "null");
	jw_raw(&w, "}");
	send_json(c, T_OK, id, w.buf);
	jw_free(&w);
}

static int nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void req_exec(struct conn *c, uint32_t id, const unsigned char *p, size_t n)
{
	const char *s = (const char *)p;
	char **argv = NULL, **env = NULL, **merged = NULL, *cwd = NULL, *user = NULL;
	int want_stdin = 0;
	int po[2] = { -1, -1 }, pe[2] = { -1, -1 }, pi[2] = { -1, -1 };
	if (parse_obj(c, id, p, n) < 0)
		return;
	if (!lifecycle_accepting_execs()) {
		send_error(c, id, ESHUTDOWN, "the guest is shutting down");
		return;
	}
	if (sess_find(c, id)) {
		send_error(c, id, EEXIST, "id %u is already in use", id);
		return;
	}
	argv = json_strv(s, toks, json_get(s, toks, 0, "argv"));
	if (!argv || !argv[0] || !argv[0][0]) {
		send_error(c, id, EINVAL, "argv: expected a non-empty array of strings");
		goto out;
	}
	int ve = json_get(s, toks, 0, "env");
	if (ve >= 0) {
		env = json_strv(s, toks, ve);
		if (!env) {
			send_error(c, id, EINVAL, "env: expected an array of \"KEY=VALUE\" strings");
			goto out;
		}
	}
	if (opt_str(c, id, s, "cwd", &cwd) < 0 || opt_str(c, id, s, "user", &user) < 0)
		goto out;
	int vs = json_get(s, toks, 0, "stdin");
	if (vs >= 0 && toks[vs].type != J_NULL && json_bool(s, toks, vs, &want_stdin) < 0) {
		send_error(c, id, EINVAL, "stdin: expected true or false");
		goto out;
	}
	struct session *se = sess_new(c, id, S_EXEC);
	if (!se) {
		send_error(c, id, EBUSY, "too many sessions (at most %d at once)", MAX_SESSIONS);
		goto out;
	}
	if (pipe2(po, O_CLOEXEC) < 0 || pipe2(pe, O_CLOEXEC) < 0 ||
	    (want_stdin ? pipe2(pi, O_CLOEXEC) : (pi[0] = open("/dev/null", O_RDONLY | O_CLOEXEC))) < 0) {
		int e = errno;
		send_error(c, id, e, "pipe: %s", strerror(e));
		se->kind = S_FREE;
		goto out;
	}
	merged = env_merge(g_image.env, env);
	struct spawn_req r = {
		.argv = argv,
		.env = merged,
		.cwd = cwd ? cwd : g_image.workdir,
		.user = user ? user : g_image.user,
		.fd_in = pi[0],
		.fd_out = po[1],
		.fd_err = pe[1],
		.die_with_parent = lifecycle_die_with_parent(),
	};
	pid_t pid = spawn_process(&r);
	if (pid < 0) {
		send_error(c, id, -pid, "fork: %s", strerror(-pid));
		se->kind = S_FREE;
		goto out;
	}
	debug("agent: exec %u: %s is pid %d", id, argv[0], (int)pid);
	se->pid = pid;
	se->out = po[0];
	se->err = pe[0];
	se->want_stdin = want_stdin;
	po[0] = pe[0] = -1;
	nonblock(se->out);
	nonblock(se->err);
	if (want_stdin) {
		se->in = pi[1];
		pi[1] = -1;
		nonblock(se->in);
	}
	struct jw w = { 0 };
	jw_raw(&w, "{\"pid\":");
	jw_int(&w, pid);
	jw_raw(&w, "}");
	send_json(c, T_OK, id, w.buf);
	jw_free(&w);
out:
	for (int i = 0; i < 2; i++) {
		close_fd(&po[i]);
		close_fd(&pe[i]);
		close_fd(&pi[i]);
	}
	strv_free(argv);
	strv_free(env);
	strv_free(merged);
	free(cwd);
	free(user);
}

static void input_exec(struct conn *c, struct session *s, const unsigned char *p, size_t n)
{
	if (!s->want_stdin) {
		send_error(c, s->id, EBADF, "exec %u was started without stdin", s->id);
		return;
	}
	if (n == 0) {
		s->in_eof = 1;
		stdin_flush(s);
		return;
	}
	if (s->in < 0) {
		/* stdin already closed (the child closed it, or it exited): acknowledge and drop. */
		send_u32(c, T_WINDOW, s->id, (uint32_t)n);
		return;
	}
	if (s->qbytes + n > STREAM_WINDOW) {
		send_error(c, s->id, EOVERFLOW, "stdin of exec %u: %zu bytes beyond the window of %d", s->id,
			   s->qbytes + n - STREAM_WINDOW, STREAM_WINDOW);
		return;
	}
	struct chunk *ch = xmalloc(sizeof *ch + n);
	ch->next = NULL;
	ch->len = n;
	ch->off = 0;
	memcpy(ch->data, p, n);
	if (s->qtail)
		s->qtail->next = ch;
	else
		s->q = ch;
	s->qtail = ch;
	s->qbytes += n;
	stdin_flush(s);
}

static void input_file(struct conn *c, struct session *s, const unsigned char *p, size_t n)
{
	if (n) {
		int e = write_all(s->fd, p, n);
		if (e) {
			send_error(c, s->id, -e, "%s: %s", s->path, strerror(-e));
			sess_free(s);
			return;
		}
		s->size += n;
		return;
	}
	/* End of the file: set the metadata, then put it in place in one rename. */
	if (fchmod(s->fd, (mode_t)s->mode) < 0 || fchown(s->fd, (uid_t)s->uid, (gid_t)s->gid) < 0 ||
	    close(s->fd) < 0) {
		s->fd = -1;
		send_error(c, s->id, errno, "%s: %s", s->path, strerror(errno));
		sess_free(s);
		return;
	}
	s->fd = -1;
	if (rename(s->tmp, s->path) < 0) {
		send_error(c, s->id, errno, "%s: %s", s->path, strerror(errno));
		sess_free(s);
		return;
	}
	free(s->tmp);
	s->tmp = NULL;
	struct jw w = { 0 };
	jw_raw(&w, "{\"size\":");
	jw_int(&w, (long long)s->size);
	jw_raw(&w, "}");
	send_json(c, T_OK, s->id, w.buf);
	jw_free(&w);
	sess_free(s);
}

static void req_input(struct conn *c, uint32_t id, const unsigned char *p, size_t n)
{
	struct session *s = sess_find(c, id);
	if (!s || (s->kind != S_EXEC && s->kind != S_WRITE)) {
		send_error(c, id, ENOENT, "no exec or file write with id %u", id);
		return;
	}
	if (s->kind == S_EXEC)
		input_exec(c, s, p, n);
	else
		input_file(c, s, p, n);
}

static void req_ack(struct conn *c, uint32_t id, const unsigned char *p, size_t n)
{
	struct session *s = sess_find(c, id);
	if (n != 4) {
		send_error(c, id, EBADMSG, "ACK payload must be 4 bytes");
		return;
	}
	if (!s || s->kind != S_EXEC)
		return; /* the exec just finished; a late acknowledgement is normal */
	uint64_t credit = (uint64_t)s->credit + get32(p);
	s->credit = credit > STREAM_WINDOW ? STREAM_WINDOW : (uint32_t)credit;
}

static void req_signal(struct conn *c, uint32_t id, const unsigned char *p, size_t n)
{
	const char *s = (const char *)p;
	long long target = -1, sig = -1;
	if (parse_obj(c, id, p, n) < 0 || opt_int(c, id, s, "target", 0, 0xffffffffLL, &target) < 0 ||
	    opt_int(c, id, s, "signal", 1, _NSIG - 1, &sig) < 0)
		return;
	if (target < 0 || sig < 0) {
		send_error(c, id, EINVAL, "signal needs \"target\" (an exec id, 0 for the main process) and \"signal\"");
		return;
	}
	pid_t pid;
	if (target == 0) {
		pid = lifecycle_main_pid();
		if (pid <= 0) {
			send_error(c, id, ESRCH, "no main process is running");
			return;
		}
	} else {
		struct session *se = sess_find(c, (uint32_t)target);
		if (!se || se->kind != S_EXEC || se->exited) {
			send_error(c, id, ESRCH, "no running exec with id %lld", target);
			return;
		}
		pid = se->pid;
	}
	if (kill(pid, (int)sig) < 0) {
		send_error(c, id, errno, "kill %d: %s", (int)pid, strerror(errno));
		return;
	}
	send_json(c, T_OK, id, "{}");
}

static int abs_path(struct conn *c, uint32_t id, const char *path)
{
	if (path && path[0] == '/')
		return 0;
	send_error(c, id, EINVAL, "path: expected an absolute path");
	return -1;
}

static void req_write_file(struct conn *c, uint32_t id, const unsigned char *p, size_t n)
{
	const char *s = (const char *)p;
	char *path = NULL;
	long long mode = 0644, uid = 0, gid = 0;
	if (parse_obj(c, id, p, n) < 0 || opt_str(c, id, s, "path", &path) < 0 ||
	    opt_int(c, id, s, "mode", 0, 07777, &mode) < 0 ||
	    opt_int(c, id, s, "uid", 0, 0xfffffffeLL, &uid) < 0 || opt_int(c, id, s, "gid", 0, 0xfffffffeLL, &gid) < 0 ||
	    abs_path(c, id, path) < 0) {
		free(path);
		return;
	}
	if (sess_find(c, id)) {
		send_error(c, id, EEXIST, "id %u is already in use", id);
		free(path);
		return;
	}
	struct session *se = sess_new(c, id, S_WRITE);
	if (!se) {
		send_error(c, id, EBUSY, "too many sessions (at most %d at once)", MAX_SESSIONS);
		free(path);
		return;
	}
	/* A temporary name in the same directory, then rename(): readers never see a half file,
	 * and a symlink at the destination is replaced, not followed. */
	const char *slash = strrchr(path, '/');
	size_t len = strlen(path) + 48;
	char *tmp = xmalloc(len);
	snprintf(tmp, len, "%.*s/.bale-write-%u-%s", (int)(slash - path), path, id, slash + 1);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;
		/* Report the directory the caller named, not our temporary name. */
		send_error(c, id, e, "%s: %s", path, strerror(e));
		free(tmp);
		free(path);
		se->kind = S_FREE;
		return;
	}
	se->fd = fd;
	se->path = path;
	se->tmp = tmp;
	se->mode = mode;
	se->uid = uid;
	se->gid = gid;
}

static void req_read_file(struct conn *c, uint32_t id, const unsigned char *p, size_t n)
{
	const char *s = (const char *)p;
	char *path = NULL;
	if (parse_obj(c, id, p, n) < 0 || opt_str(c, id, s, "path", &path) < 0 || abs_path(c, id, path) < 0) {
		free(path);
		return;
	}
	if (sess_find(c, id)) {
		send_error(c, id, EEXIST, "id %u is already in use", id);
		free(path);
		return;
	}
	/* O_NONBLOCK so that opening a FIFO cannot hang the agent; only regular files are read. */
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		int e = errno;
		send_error(c, id, e, "%s: %s", path, strerror(e));
		if (fd >= 0)
			close(fd);
		free(path);
		return;
	}
	if (!S_ISREG(st.st_mode)) {
		send_error(c, id, S_ISDIR(st.st_mode) ? EISDIR : EINVAL, "%s: not a regular file", path);
		close(fd);
		free(path);
		return;
	}
	struct session *se = sess_new(c, id, S_READ);
	if (!se) {
		send_error(c, id, EBUSY, "too many sessions (at most %d at once)", MAX_SESSIONS);
		close(fd);
		free(path);
		return;
	}
	se->fd = fd;
	se->path = path;
}

static void req_shutdown(struct conn *c, uint32_t id, const unsigned char *p, size_t n)
{
	long long timeout = 10000;
	/* One hour: a longer grace period is a mistake, not a wish. */
	if (parse_obj(c, id, p, n) < 0 || opt_int(c, id, (const char *)p, "timeoutMs", 0, 3600000, &timeout) < 0)
		return;
	send_json(c, T_OK, id, "{}");
	lifecycle_shutdown((int)timeout);
}

static void dispatch(struct conn *c, int type, uint32_t id, const unsigned char *p, size_t n)
{
	if (!c->hello && type != T_HELLO && type != T_PING) {
		send_error(c, id, EPROTO, "send HELLO first");
		return;
	}
	switch (type) {
	case T_HELLO: req_hello(c, id, p, n); break;
	case T_PING: send_frame(c, T_OK, id, p, n); break;
	case T_EXEC: req_exec(c, id, p, n); break;
	case T_INPUT: req_input(c, id, p, n); break;
	case T_SIGNAL: req_signal(c, id, p, n); break;
	case T_WRITE_FILE: req_write_file(c, id, p, n); break;
	case T_READ_FILE: req_read_file(c, id, p, n); break;
	case T_SHUTDOWN: req_shutdown(c, id, p, n); break;
	case T_ACK: req_ack(c, id, p, n); break;
	default: send_error(c, id, EBADMSG, "unknown frame type 0x%02x", type);
	}
}

/* ---------------------------------------------------------------- frames in */

/* Consume complete frames from c->rx. A header that cannot be trusted (bad magic or version,
 * length over the limit) is answered with one ERROR, then bytes are skipped until something
 * that looks like a frame start: the connection keeps working after garbage. */
static void rx_process(struct conn *c)
{
	size_t off = 0;
	while (c->up) {
		unsigned char *h = c->rx + off;
		size_t avail = c->rxlen - off;
		if (c->resync) {
			size_t i = 0;
			for (; i < avail; i++) {
				if (h[i] != PROTO_MAGIC0)
					continue;
				if (i + 1 < avail && h[i + 1] != PROTO_MAGIC1)
					continue;
				if (i + 2 < avail && h[i + 2] != PROTO_VERSION)
					continue;
				if (i + 12 <= avail && get32(h + i + 8) > FRAME_MAX_PAYLOAD)
					continue;
				break;
			}
			off += i;
			if (i == avail)
				break;
			h = c->rx + off;
			avail = c->rxlen - off;
			if (avail < FRAME_HDR)
				break; /* a candidate, but its header is not complete yet */
			c->resync = 0;
		}
		if (avail < FRAME_HDR)
			break;
		uint32_t id = get32(h + 4), len = get32(h + 8);
		if (h[0] != PROTO_MAGIC0 || h[1] != PROTO_MAGIC1) {
			send_error(c, 0, EBADMSG, "bad frame magic 0x%02x%02x; skipping to the next frame", h[0], h[1]);
		} else if (h[2] != PROTO_VERSION) {
			send_error(c, id, EPROTONOSUPPORT, "frame version %u, this agent speaks %d", h[2], PROTO_VERSION);
		} else if (len > FRAME_MAX_PAYLOAD) {
			send_error(c, id, E2BIG, "frame payload of %u bytes exceeds the limit of %d", len, FRAME_MAX_PAYLOAD);
		} else {
			if (avail < FRAME_HDR + len)
				break;
			off += FRAME_HDR + len;
			dispatch(c, h[3], id, h + FRAME_HDR, len);
			continue;
		}
		c->resync = 1;
		off += 1;
	}
	if (!c->up)
		return;
	memmove(c->rx, c->rx + off, c->rxlen - off);
	c->rxlen -= off;
}

/* Ask for SIGIO when the host opens the port (virtio_console raises it when the host side
 * connects or disconnects); the loop also rechecks on a timer in case it does not. */
static void vport_wait_for_host(struct conn *c)
{
	int fl = fcntl(c->fd, F_GETFL);
	(void)fcntl(c->fd, F_SETOWN, getpid());
	(void)fcntl(c->fd, F_SETFL, fl | O_ASYNC);
	vport_recheck_at = now_ms() + VPORT_RECHECK_MS;
}

static void conn_down(struct conn *c)
{
	if (!c->up)
		return;
	debug("agent: host left %s", c->name);
	c->up = 0;
	c->hello = 0;
	c->resync = 0;
	c->rxlen = 0;
	c->txoff = c->txlen = 0;
	for (int i = 0; i < MAX_SESSIONS; i++)
		if (sessions[i].kind != S_FREE && sessions[i].conn == c)
			sess_orphan(&sessions[i]);
	if (c->kind == C_SOCK) {
		close_fd(&c->fd);
		free(c->tx);
		c->tx = NULL;
		c->txcap = 0;
		c->kind = C_FREE;
	} else if (c->kind == C_VPORT) {
		vport_wait_for_host(c);
	}
}

static void conn_up(struct conn *c)
{
	c->up = 1;
	c->hello = 0;
	c->resync = 0;
	c->rxlen = 0;
	c->txoff = c->txlen = 0;
	if (c->kind == C_VPORT) {
		int fl = fcntl(c->fd, F_GETFL);
		(void)fcntl(c->fd, F_SETFL, fl & ~O_ASYNC);
	}
	debug("agent: host connected on %s", c->name);
}

static void conn_read(struct conn *c)
{
	for (;;) {
		size_t room = sizeof c->rx - c->rxlen;
		if (room == 0) {
			/* Cannot happen (a full buffer always holds a complete frame, which
			 * rx_process consumes); if it did, start over rather than stop reading. */
			c->rxlen = 0;
			c->resync = 1;
			continue;
		}
		ssize_t r = read(c->fd, c->rx + c->rxlen, room);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			return;
		if (r <= 0) {
			/* 0 on a virtio port: no data and the host is not connected. */
			conn_down(c);
			return;
		}
		c->rxlen += (size_t)r;
		rx_process(c);
		if (!c->up || c->txlen - c->txoff >= TX_HIGH)
			return;
	}
}

static void conn_flush(struct conn *c)
{
	while (c->up && c->txoff < c->txlen) {
		ssize_t w = c->kind == C_SOCK ? send(c->fd, c->tx + c->txoff, c->txlen - c->txoff, MSG_NOSIGNAL)
					      : write(c->fd, c->tx + c->txoff, c->txlen - c->txoff);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN)
			return;
		if (w <= 0) {
			conn_down(c);
			return;
		}
		c->txoff += (size_t)w;
	}
	if (c->txoff == c->txlen)
		c->txoff = c->txlen = 0;
}

void agent_flush(void)
{
	for (int i = 0; i < MAX_CONNS; i++)
		if (conns[i].kind == C_VPORT || conns[i].kind == C_SOCK)
			conn_flush(&conns[i]);
}

int agent_tx_pending(void)
{
	for (int i = 0; i < MAX_CONNS; i++)
		if (conns[i].up && conns[i].txlen > conns[i].txoff)
			return 1;
	return 0;
}

void agent_main_exited(int status)
{
	struct jw w = { 0 };
	jw_raw(&w, "{\"event\":\"main-exit\",");
	status_members(&w, status);
	jw_raw(&w, "}");
	for (int i = 0; i < MAX_CONNS; i++)
		if (conns[i].up && conns[i].hello)
			send_json(&conns[i], T_EVENT, 0, w.buf);
	jw_free(&w);
}

/* ---------------------------------------------------------------- channels */

static struct conn *conn_slot(void)
{
	for (int i = 0; i < MAX_CONNS; i++)
		if (conns[i].kind == C_FREE) {
			struct conn *c = &conns[i];
			memset(c, 0, offsetof(struct conn, rx));
			c->rxlen = 0;
			c->txoff = c->txlen = 0;
			c->fd = -1;
			return c;
		}
	return NULL;
}

static int vport_connected(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	if (poll(&p, 1, 0) < 0)
		return 0;
	return !(p.revents & (POLLHUP | POLLERR));
}

void agent_on_sigio(void)
{
	for (int i = 0; i < MAX_CONNS; i++) {
		struct conn *c = &conns[i];
		if (c->kind == C_VPORT && !c->up && vport_connected(c->fd))
			conn_up(c);
	}
}

int agent_open_vports(void)
{
	int n = 0;
	DIR *d = opendir("/sys/class/virtio-ports");
	if (!d)
		return 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char path[512], *name = NULL;
		snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
		if (read_file(path, 256, &name, NULL) < 0)
			continue;
		name[strcspn(name, "\n")] = 0;
		int ours = strcmp(name, "org.bale.agent") == 0 || strncmp(name, "org.bale.agent.", 15) == 0;
		free(name);
		if (!ours)
			continue;
		struct conn *c = conn_slot();
		if (!c)
			break;
		snprintf(path, sizeof path, "/dev/%s", e->d_name);
		/* devtmpfs creates the node asynchronously after the port appears in sysfs; it is
		 * there long before stage 2 runs, so one open is enough and a failure is reported. */
		int fd = open(path, O_RDWR | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
		if (fd < 0) {
			say("agent: %s: %s", path, strerror(errno));
			continue;
		}
		c->kind = C_VPORT;
		c->fd = fd;
		snprintf(c->name, sizeof c->name, "%.60s", path);
		if (vport_connected(fd)) {
			conn_up(c);
		} else {
			debug("agent: waiting for the host on %s", c->name);
			vport_wait_for_host(c);
		}
		n++;
	}
	closedir(d);
	return n;
}

int agent_listen(const char *path)
{
	/* Bound and listening under a temporary name, then renamed: the path appears only once a
	 * connect() to it can succeed, so a client that sees it never gets ECONNREFUSED. */
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	if (snprintf(a.sun_path, sizeof a.sun_path, "%s.%d", path, (int)getpid()) >= (int)sizeof a.sun_path)
		return -ENAMETOOLONG;
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	(void)unlink(a.sun_path);
	if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, MAX_CONNS) < 0 || rename(a.sun_path, path) < 0) {
		int e = -errno;
		(void)unlink(a.sun_path);
		close(fd);
		return e;
	}
	listen_fd = fd;
	return 0;
}

static void accept_conn(void)
{
	int fd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0)
		return;
	struct conn *c = conn_slot();
	if (!c) {
		close(fd);
		return;
	}
	c->kind = C_SOCK;
	c->fd = fd;
	snprintf(c->name, sizeof c->name, "socket %d", fd);
	conn_up(c);
}

/* ---------------------------------------------------------------- poll integration */

enum { P_LISTEN = 1, P_CONN, P_OUT, P_ERR, P_IN };

int agent_fill_poll(struct pollfd *pfd, struct pref *ref, int max)
{
	int n = 0;
#define ADD(FD, EV, KIND, PTR)                                                                     \
	do {                                                                                       \
		if (n < max) {                                                                     \
			pfd[n] = (struct pollfd){ .fd = (FD), .events = (EV) };                    \
			ref[n] = (struct pref){ .kind = (KIND), .ptr = (PTR), .which = (FD) };     \
			n++;                                                                       \
		}                                                                                  \
	} while (0)
	if (listen_fd >= 0)
		ADD(listen_fd, POLLIN, P_LISTEN, NULL);
	for (int i = 0; i < MAX_CONNS; i++) {
		struct conn *c = &conns[i];
		if ((c->kind != C_VPORT && c->kind != C_SOCK) || !c->up)
			continue;
		short ev = 0;
		/* Backpressure: while the host does not read our replies, do not read its requests. */
		if (c->txlen - c->txoff < TX_HIGH)
			ev |= POLLIN;
		if (c->txlen > c->txoff)
			ev |= POLLOUT;
		ADD(c->fd, ev, P_CONN, c);
	}
	for (int i = 0; i < MAX_SESSIONS; i++) {
		struct session *s = &sessions[i];
		if (s->kind != S_EXEC || s->exited)
			continue;
		int can_send = !s->conn || (s->credit > 0 && s->conn->txlen - s->conn->txoff < TX_HIGH);
		if (s->out >= 0 && can_send)
			ADD(s->out, POLLIN, P_OUT, s);
		if (s->err >= 0 && can_send)
			ADD(s->err, POLLIN, P_ERR, s);
		if (s->in >= 0 && s->q)
			ADD(s->in, POLLOUT, P_IN, s);
	}
#undef ADD
	return n;
}

void agent_on_poll(const struct pref *ref, short revents)
{
	struct session *s = ref->ptr;
	switch (ref->kind) {
	case P_LISTEN:
		accept_conn();
		break;
	case P_CONN: {
		struct conn *c = ref->ptr;
		if (!c->up)
			break;
		if (revents & (POLLIN | POLLHUP | POLLERR)) {
			if (revents & POLLIN)
				conn_read(c);
			else
				conn_down(c);
		}
		if (c->up && (revents & POLLOUT))
			conn_flush(c);
		break;
	}
	case P_OUT:
		if (s->kind == S_EXEC && s->out == ref->which)
			exec_read(s, &s->out, T_STDOUT);
		break;
	case P_ERR:
		if (s->kind == S_EXEC && s->err == ref->which)
			exec_read(s, &s->err, T_STDERR);
		break;
	case P_IN:
		if (s->kind == S_EXEC && s->in == ref->which) {
			if (revents & (POLLERR | POLLHUP)) {
				/* The child closed its stdin: acknowledge and drop what is queued. */
				if (s->conn && s->qbytes)
					send_u32(s->conn, T_WINDOW, s->id, (uint32_t)s->qbytes);
				stdin_drop(s);
				close_fd(&s->in);
			} else {
				stdin_flush(s);
			}
		}
		break;
	}
}

int agent_timeout_ms(void)
{
	if (vport_recheck_at < 0)
		return -1;
	int64_t left = vport_recheck_at - now_ms();
	if (left > 0)
		return (int)left;
	vport_recheck_at = -1;
	int down = 0;
	for (int i = 0; i < MAX_CONNS; i++) {
		struct conn *c = &conns[i];
		if (c->kind != C_VPORT || c->up)
			continue;
		if (vport_connected(c->fd))
			conn_up(c);
		else
			down = 1;
	}
	if (down)
		vport_recheck_at = now_ms() + VPORT_RECHECK_MS;
	return down ? VPORT_RECHECK_MS : -1;
}
