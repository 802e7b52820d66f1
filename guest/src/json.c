/* See json.h. Recursive descent over the bytes; tokens are appended in document order. */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "json.h"

struct parser {
	const char *s;
	size_t len, pos;
	struct jtok *t;
	int max, n;
};

static void ws(struct parser *p)
{
	while (p->pos < p->len) {
		char c = p->s[p->pos];
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
			break;
		p->pos++;
	}
}

static int newtok(struct parser *p, unsigned char type)
{
	if (p->n >= p->max)
		return -1;
	struct jtok *t = &p->t[p->n];
	t->type = type;
	t->start = (int)p->pos;
	t->end = (int)p->pos;
	t->size = 0;
	t->next = p->n + 1;
	return p->n++;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static int parse_string(struct parser *p)
{
	/* p->pos is at the opening quote */
	p->pos++;
	int i = newtok(p, J_STR);
	if (i < 0)
		return -1;
	while (p->pos < p->len) {
		unsigned char c = (unsigned char)p->s[p->pos];
		if (c == '"') {
			p->t[i].end = (int)p->pos;
			p->pos++;
			return i;
		}
		if (c < 0x20)
			return -1;
		if (c == '\\') {
			if (++p->pos >= p->len)
				return -1;
			char e = p->s[p->pos];
			if (e == 'u') {
				if (p->pos + 4 >= p->len)
					return -1;
				for (int k = 1; k <= 4; k++)
					if (hexval(p->s[p->pos + (size_t)k]) < 0)
						return -1;
				p->pos += 4;
			} else if (!strchr("\"\\/bfnrt", e) || e == 0) {
				return -1;
			}
		}
		p->pos++;
	}
	return -1;
}

static int parse_number(struct parser *p)
{
	int i = newtok(p, J_NUM);
	if (i < 0)
		return -1;
	size_t q = p->pos;
	if (q < p->len && p->s[q] == '-')
		q++;
	if (q >= p->len)
		return -1;
	if (p->s[q] == '0') {
		q++;
	} else if (is_digit(p->s[q])) {
		while (q < p->len && is_digit(p->s[q]))
			q++;
	} else {
		return -1;
	}
	if (q < p->len && p->s[q] == '.') {
		q++;
		if (q >= p->len || !is_digit(p->s[q]))
			return -1;
		while (q < p->len && is_digit(p->s[q]))
			q++;
	}
	if (q < p->len && (p->s[q] == 'e' || p->s[q] == 'E')) {
		q++;
		if (q < p->len && (p->s[q] == '+' || p->s[q] == '-'))
			q++;
		if (q >= p->len || !is_digit(p->s[q]))
			return -1;
		while (q < p->len && is_digit(p->s[q]))
			q++;
	}
	p->pos = q;
	p->t[i].end = (int)q;
	return i;
}

static int parse_literal(struct parser *p, const char *word, unsigned char type)
{
	size_t n = strlen(word);
	if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0)
		return -1;
	int i = newtok(p, type);
	if (i < 0)
		return -1;
	p->pos += n;
	p->t[i].end = (int)p->pos;
	return i;
}

static int parse_value(struct parser *p, int depth);

static int parse_container(struct parser *p, int depth, int obj)
{
	if (depth >= JSON_MAX_DEPTH)
		return -1;
	int i = newtok(p, obj ? J_OBJ : J_ARR);
	if (i < 0)
		return -1;
	p->pos++; /* '{' or '[' */
	ws(p);
	char close = obj ? '}' : ']';
	if (p->pos < p->len && p->s[p->pos] == close) {
		p->pos++;
		p->t[i].end = (int)p->pos;
		p->t[i].next = p->n;
		return i;
	}
	for (;;) {
		if (obj) {
			ws(p);
			if (p->pos >= p->len || p->s[p->pos] != '"')
				return -1;
			if (parse_string(p) < 0)
				return -1;
			ws(p);
			if (p->pos >= p->len || p->s[p->pos] != ':')
				return -1;
			p->pos++;
		}
		if (parse_value(p, depth + 1) < 0)
			return -1;
		p->t[i].size++;
		ws(p);
		if (p->pos >= p->len)
			return -1;
		char c = p->s[p->pos++];
		if (c == close)
			break;
		if (c != ',')
			return -1;
	}
	p->t[i].end = (int)p->pos;
	p->t[i].next = p->n;
	return i;
}

static int parse_value(struct parser *p, int depth)
{
	ws(p);
	if (p->pos >= p->len)
		return -1;
	switch (p->s[p->pos]) {
	case '{':
		return parse_container(p, depth, 1);
	case '[':
		return parse_container(p, depth, 0);
	case '"':
		return parse_string(p);
	case 't':
		return parse_literal(p, "true", J_BOOL);
	case 'f':
		return parse_literal(p, "false", J_BOOL);
	case 'n':
		return parse_literal(p, "null", J_NULL);
	default:
		return parse_number(p);
	}
}

int json_parse(const char *s, size_t len, struct jtok *t, int max)
{
	/* Offsets are ints; nothing we parse comes near 2 GiB (payloads are capped at 64 KiB,
	 * the config at 1 MiB), so refuse rather than overflow. */
	if (len > 0x7fffffff)
		return -1;
	struct parser p = { .s = s, .len = len, .pos = 0, .t = t, .max = max, .n = 0 };
	if (parse_value(&p, 0) < 0)
		return -1;
	ws(&p);
	if (p.pos != len)
		return -1;
	return p.n;
}

/* Decode a validated string token into out (which has room for end-start+1 bytes: an escape
 * never decodes to more bytes than it occupies). Returns the length, or -1 on \u0000. */
static int decode(const char *s, const struct jtok *t, char *out)
{
	int o = 0;
	for (int k = t->start; k < t->end; k++) {
		char c = s[k];
		if (c != '\\') {
			out[o++] = c;
			continue;
		}
		c = s[++k];
		switch (c) {
		case 'b': out[o++] = '\b'; break;
		case 'f': out[o++] = '\f'; break;
		case 'n': out[o++] = '\n'; break;
		case 'r': out[o++] = '\r'; break;
		case 't': out[o++] = '\t'; break;
		case 'u': {
			unsigned cp = 0;
			for (int h = 1; h <= 4; h++)
				cp = cp << 4 | (unsigned)hexval(s[k + h]);
			k += 4;
			/* A high surrogate followed by an escaped low surrogate is one code point (6+6
			 * bytes in, 4 out); a lone surrogate is kept as its 3-byte form (WTF-8), as it
			 * can only come from a peer that sent an ill-formed string on purpose. */
			if (cp >= 0xd800 && cp < 0xdc00 && k + 6 < t->end && s[k + 1] == '\\' && s[k + 2] == 'u') {
				unsigned lo = 0;
				int ok = 1;
				for (int h = 3; h <= 6; h++) {
					int v = hexval(s[k + h]);
					if (v < 0)
						ok = 0;
					lo = lo << 4 | (unsigned)(v < 0 ? 0 : v);
				}
				if (ok && lo >= 0xdc00 && lo < 0xe000) {
					cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
					k += 6;
				}
			}
			if (cp == 0)
				return -1;
			if (cp < 0x80) {
				out[o++] = (char)cp;
			} else if (cp < 0x800) {
				out[o++] = (char)(0xc0 | cp >> 6);
				out[o++] = (char)(0x80 | (cp & 0x3f));
			} else if (cp < 0x10000) {
				out[o++] = (char)(0xe0 | cp >> 12);
				out[o++] = (char)(0x80 | (cp >> 6 & 0x3f));
				out[o++] = (char)(0x80 | (cp & 0x3f));
			} else {
				out[o++] = (char)(0xf0 | cp >> 18);
				out[o++] = (char)(0x80 | (cp >> 12 & 0x3f));
				out[o++] = (char)(0x80 | (cp >> 6 & 0x3f));
				out[o++] = (char)(0x80 | (cp & 0x3f));
			}
			break;
		}
		default: /* '"', '\\', '/' */
			out[o++] = c;
		}
	}
	out[o] = 0;
	return o;
}

char *json_strdup(const char *s, const struct jtok *t, int i)
{
	if (i < 0 || t[i].type != J_STR)
		return NULL;
	char *out = xmalloc((size_t)(t[i].end - t[i].start) + 1);
	if (decode(s, &t[i], out) < 0) {
		free(out);
		return NULL;
	}
	return out;
}

int json_get(const char *s, const struct jtok *t, int obj, const char *key)
{
	if (obj < 0 || t[obj].type != J_OBJ)
		return -1;
	size_t klen = strlen(key);
	int k = obj + 1;
	for (int m = 0; m < t[obj].size; m++) {
		int v = k + 1;
		const struct jtok *kt = &t[k];
		size_t raw = (size_t)(kt->end - kt->start);
		if (raw == klen && memcmp(s + kt->start, key, klen) == 0)
			return v;
		if (memchr(s + kt->start, '\\', raw)) {
			/* An escaped key ("\u0061rgv") decodes to at most its raw length. */
			char *dk = json_strdup(s, t, k);
			int eq = dk && strcmp(dk, key) == 0;
			free(dk);
			if (eq)
				return v;
		}
		k = t[v].next;
	}
	return -1;
}

char **json_strv(const char *s, const struct jtok *t, int i)
{
	if (i < 0)
		return NULL;
	if (t[i].type == J_NULL) {
		char **v = xmalloc(sizeof(char *));
		v[0] = NULL;
		return v;
	}
	if (t[i].type != J_ARR)
		return NULL;
	char **v = xmalloc(sizeof(char *) * ((size_t)t[i].size + 1));
	int k = i + 1, n = 0;
	for (int m = 0; m < t[i].size; m++) {
		v[n] = json_strdup(s, t, k);
		if (!v[n]) {
			v[n] = NULL;
			strv_free(v);
			return NULL;
		}
		n++;
		k = t[k].next;
	}
	v[n] = NULL;
	return v;
}

int json_int(const char *s, const struct jtok *t, int i, long long lo, long long hi, long long *out)
{
	if (i < 0 || t[i].type != J_NUM)
		return -1;
	long long v = 0;
	int k = t[i].start, neg = 0;
	if (s[k] == '-') {
		neg = 1;
		k++;
	}
	if (k >= t[i].end)
		return -1;
	for (; k < t[i].end; k++) {
		if (!is_digit(s[k]))
			return -1; /* fractions and exponents are not integers here */
		/* 1e15 is far beyond any bound we use and far below LLONG_MAX: stop before overflow. */
		if (v > 1000000000000000LL)
			return -1;
		v = v * 10 + (s[k] - '0');
	}
	if (neg)
		v = -v;
	if (v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

int json_bool(const char *s, const struct jtok *t, int i, int *out)
{
	if (i < 0 || t[i].type != J_BOOL)
		return -1;
	*out = s[t[i].start] == 't';
	return 0;
}
