/* Small helpers shared by both stages and the agent. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

int g_console_fd = 2;
int g_debug;

static void vsay(const char *fmt, va_list ap)
{
	/* 512 bytes: one console line; longer messages are cut, never split across writes. */
	char line[512];
	int n = snprintf(line, sizeof line, "bale-init: ");
	int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
	if (m < 0)
		m = 0;
	size_t len = (size_t)n + ((size_t)m < sizeof line - (size_t)n - 1 ? (size_t)m : sizeof line - (size_t)n - 2);
	line[len++] = '\n';
	(void)write_all(g_console_fd, line, len);
}

void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
}

void debug(const char *fmt, ...)
{
	if (!g_debug)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsay(fmt, ap);
	va_end(ap);
}

int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		/* Out of memory in PID 1: nothing sensible is left to do but say so and stop. */
		say("out of memory");
		power_off();
	}
	return p;
}

void *xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);
	if (!q) {
		say("out of memory");
		power_off();
	}
	return q;
}

char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	return memcpy(xmalloc(n), s, n);
}

void strv_free(char **v)
{
	if (!v)
		return;
	for (char **p = v; *p; p++)
		free(*p);
	free(v);
}

size_t strv_len(char *const *v)
{
	size_t n = 0;
	while (v && v[n])
		n++;
	return n;
}

int read_file(const char *path, size_t max, char **out, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size_t cap = 4096, n = 0;
	char *buf = xmalloc(cap + 1);
	for (;;) {
		if (n == cap) {
			if (cap > max) {
				free(buf);
				close(fd);
				return -EFBIG;
			}
			cap *= 2;
			buf = xrealloc(buf, cap + 1);
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = -errno;
			free(buf);
			close(fd);
			return e;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	if (n > max) {
		free(buf);
		return -EFBIG;
	}
	buf[n] = 0;
	*out = buf;
	if (len)
		*len = n;
	return 0;
}

int write_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int replace_file(const char *path, const char *content, mode_t mode)
{
	char tmp[4096];
	const char *slash = strrchr(path, '/');
	size_t dirlen = slash ? (size_t)(slash - path) : 0;
	if (snprintf(tmp, sizeof tmp, "%.*s/.bale-tmp-%s", (int)dirlen, path, slash ? slash + 1 : path) >= (int)sizeof tmp)
		return -ENAMETOOLONG;
	(void)unlink(tmp);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0)
		return -errno;
	int e = write_all(fd, content, strlen(content));
	if (!e && fchmod(fd, mode) < 0)
		e = -errno;
	if (close(fd) < 0 && !e)
		e = -errno;
	if (!e && rename(tmp, path) < 0)
		e = -errno;
	if (e)
		(void)unlink(tmp);
	return e;
}

int mkdir_p(const char *path, mode_t mode)
{
	char buf[4096];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof buf)
		return -ENAMETOOLONG;
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || *p == 0) {
			char c = *p;
			*p = 0;
			if (mkdir(buf, mode) < 0 && errno != EEXIST)
				return -errno;
			*p = c;
			if (!c)
				break;
		}
	}
	return 0;
}

/* Split the next parameter off the command line like the kernel's next_arg(): spaces separate,
 * double quotes group and are removed. Writes "key\0value\0" into buf; returns the rest. */
static const char *next_param(const char *s, char *buf, size_t bufsz, const char **val)
{
	while (*s == ' ' || *s == '\t' || *s == '\n')
		s++;
	size_t n = 0;
	int inq = 0, overflow = 0;
	*val = NULL;
	for (; *s; s++) {
		if (*s == '"') {
			inq = !inq;
			continue;
		}
		if (!inq && (*s == ' ' || *s == '\t' || *s == '\n'))
			break;
		if (n + 1 >= bufsz) {
			overflow = 1;
			continue;
		}
		if (*s == '=' && !*val) {
			buf[n++] = 0;
			*val = buf + n;
			continue;
		}
		buf[n++] = *s;
	}
	buf[n] = 0;
	if (overflow) {
		/* Longer than any real parameter: ignored rather than matched with a cut value. */
		buf[0] = 0;
		*val = NULL;
	}
	return s;
}

const char *cmdline_get(const char *cmdline, const char *key, char *buf, size_t bufsz)
{
	/* 4096: the longest x86 kernel command line is 2048 bytes (COMMAND_LINE_SIZE). */
	char tmp[4096];
	const char *found = NULL;
	if (!cmdline)
		return NULL;
	for (const char *s = cmdline; *s;) {
		const char *val;
		s = next_param(s, tmp, sizeof tmp, &val);
		if (tmp[0] == 0 && !val)
			continue;
		if (strcmp(tmp, key) == 0) {
			const char *v = val ? val : "";
			snprintf(buf, bufsz, "%s", v);
			found = buf;
		}
	}
	return found;
}

static int b64val(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+' || c == '-')
		return 62;
	if (c == '/' || c == '_')
		return 63;
	return -1;
}

int base64_decode(const char *in, char **out, size_t *outlen)
{
	size_t n = strlen(in);
	while (n && in[n - 1] == '=')
		n--;
	char *buf = xmalloc(n * 3 / 4 + 2);
	size_t o = 0;
	unsigned acc = 0;
	int bits = 0;
	for (size_t i = 0; i < n; i++) {
		int v = b64val((unsigned char)in[i]);
		if (v < 0) {
			free(buf);
			return -EINVAL;
		}
		acc = (acc << 6) | (unsigned)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			buf[o++] = (char)((acc >> bits) & 0xff);
		}
	}
	buf[o] = 0;
	*out = buf;
	if (outlen)
		*outlen = o;
	return 0;
}

static void jw_grow(struct jw *w, size_t add)
{
	if (w->len + add + 1 <= w->cap)
		return;
	size_t cap = w->cap ? w->cap : 128;
	while (cap < w->len + add + 1)
		cap *= 2;
	w->buf = xrealloc(w->buf, cap);
	w->cap = cap;
}

void jw_raw(struct jw *w, const char *s)
{
	size_t n = strlen(s);
	jw_grow(w, n);
	memcpy(w->buf + w->len, s, n + 1);
	w->len += n;
}

void jw_str(struct jw *w, const char *s)
{
	jw_grow(w, 2);
	w->buf[w->len++] = '"';
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		char esc[8];
		if (*p == '"' || *p == '\\') {
			esc[0] = '\\';
			esc[1] = (char)*p;
			esc[2] = 0;
		} else if (*p < 0x20) {
			snprintf(esc, sizeof esc, "\\u%04x", *p);
		} else {
			esc[0] = (char)*p;
			esc[1] = 0;
		}
		jw_raw(w, esc);
	}
	jw_raw(w, "\"");
}

void jw_int(struct jw *w, long long v)
{
	char num[24];
	snprintf(num, sizeof num, "%lld", v);
	jw_raw(w, num);
}

void jw_free(struct jw *w)
{
	free(w->buf);
	w->buf = NULL;
	w->len = w->cap = 0;
}

/* Entries of `extra` replace those of `base` with the same name ("K=V" replaces base's K). */
char **env_merge(char *const *base, char *const *extra)
{
	size_t nb = strv_len(base), ne = strv_len(extra), k = 0;
	char **out = xmalloc(sizeof(char *) * (nb + ne + 1));
	for (size_t i = 0; i < nb; i++) {
		const char *eq = strchr(base[i], '=');
		size_t klen = eq ? (size_t)(eq - base[i]) : strlen(base[i]);
		int overridden = 0;
		for (size_t j = 0; j < ne && !overridden; j++)
			overridden = strncmp(extra[j], base[i], klen) == 0 && (extra[j][klen] == '=' || extra[j][klen] == 0);
		if (!overridden)
			out[k++] = xstrdup(base[i]);
	}
	for (size_t j = 0; j < ne; j++) {
		/* Of two entries with one name in `extra`, the later wins (as `docker run -e`). */
		const char *eq = strchr(extra[j], '=');
		size_t klen = eq ? (size_t)(eq - extra[j]) : strlen(extra[j]);
		int later = 0;
		for (size_t l = j + 1; l < ne && !later; l++)
			later = strncmp(extra[l], extra[j], klen) == 0 && (extra[l][klen] == '=' || extra[l][klen] == 0);
		if (!later)
			out[k++] = xstrdup(extra[j]);
	}
	out[k] = NULL;
	return out;
}
