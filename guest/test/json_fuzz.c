/*
 * Host-side check of the guest's JSON parser, built with AddressSanitizer and UBSan by
 * `make -C guest check`: known-good and known-bad documents, decoding results, then mutation
 * fuzzing where every input, valid or not, is parsed into a token array sized exactly as the
 * agent sizes it and walked with every accessor. Any out-of-bounds access aborts the run.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../src/common.h"
#include "../src/json.h"

void power_off(void)
{
	abort();
}

static int failures;

#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                       \
			fprintf(stderr, __VA_ARGS__);                                              \
			fputc('\n', stderr);                                                       \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

/* Parse exactly like the agent: tokens for len/2+2 values, the input in its own heap block so
 * that ASan sees a read one byte past the end. */
static int parse(const char *doc, size_t len, struct jtok **out)
{
	char *copy = malloc(len ? len : 1);
	memcpy(copy, doc, len);
	int max = (int)(len / 2 + 2);
	struct jtok *t = malloc(sizeof *t * (size_t)max);
	int n = json_parse(copy, len, t, max);
	if (n > 0) {
		if (n > max) {
			fprintf(stderr, "FAIL: %d tokens for a limit of %d\n", n, max);
			abort();
		}
		/* Walk everything with every accessor. */
		for (int i = 0; i < n; i++) {
			free(json_strdup(copy, t, i));
			strv_free(json_strv(copy, t, i));
			long long v;
			int b;
			(void)json_int(copy, t, i, -1000000, 1000000, &v);
			(void)json_bool(copy, t, i, &b);
			if (t[i].next <= i || t[i].next > n) {
				fprintf(stderr, "FAIL: token %d has next %d of %d\n", i, t[i].next, n);
				abort();
			}
			static const char *const keys[] = { "argv", "env", "a", "", "\xc3\xa9" };
			for (size_t k = 0; k < ARRAY_LEN(keys); k++)
				(void)json_get(copy, t, i, keys[k]);
		}
	}
	if (out) {
		*out = t;
	} else {
		free(t);
	}
	free(copy);
	return n;
}

static const char *const valid[] = {
	"{}",
	"[]",
	"0",
	"-0.5e+10",
	"\"\"",
	"true",
	" null ",
	"{\"entrypoint\":[\"/bin/sh\",\"-c\"],\"cmd\":null,\"env\":[\"A=1\",\"B=\\\"q\\\"\"],\"user\":\"1000:1000\"}",
	"{\"a\":{\"b\":[1,2,{\"c\":[]}]},\"d\":\"\\u00e9\\ud83d\\ude00\\n\\t\\/\"}",
};

static const char *const invalid[] = {
	"",
	"{",
	"}",
	"[1,]",
	"{\"a\":1,}",
	"{\"a\" 1}",
	"{a:1}",
	"01",
	"1.",
	".5",
	"-",
	"1e",
	"tru",
	"nulll",
	"\"abc",
	"\"\\x\"",
	"\"\\u12G4\"",
	"\"\\u123\"",
	"\"a\nb\"",
	"[1] [2]",
	"{\"a\":1}}",
};

/* `levels` nested arrays around a 1. */
static char *nested(int levels)
{
	char *s = malloc((size_t)levels * 2 + 2);
	memset(s, '[', (size_t)levels);
	s[levels] = '1';
	memset(s + levels + 1, ']', (size_t)levels);
	s[levels * 2 + 1] = 0;
	return s;
}

static void known(void)
{
	for (size_t i = 0; i < ARRAY_LEN(valid); i++)
		CHECK(parse(valid[i], strlen(valid[i]), NULL) > 0, "valid document refused: %s", valid[i]);
	for (size_t i = 0; i < ARRAY_LEN(invalid); i++)
		CHECK(parse(invalid[i], strlen(invalid[i]), NULL) < 0, "invalid document accepted: %s", invalid[i]);
	char *deep = nested(JSON_MAX_DEPTH);
	CHECK(parse(deep, strlen(deep), NULL) > 0, "%d levels of nesting refused", JSON_MAX_DEPTH);
	free(deep);
	deep = nested(JSON_MAX_DEPTH + 1);
	CHECK(parse(deep, strlen(deep), NULL) < 0, "%d levels of nesting accepted", JSON_MAX_DEPTH + 1);
	free(deep);
	deep = nested(100000); /* far deeper: refused without exhausting the stack */
	CHECK(parse(deep, strlen(deep), NULL) < 0, "100000 levels of nesting accepted");
	free(deep);
	/* A NUL byte inside the input is not JSON whitespace. */
	CHECK(parse("{}\0", 3, NULL) < 0, "trailing NUL accepted");
}

static void decoding(void)
{
	const char *doc = "{\"s\":\"\\u00e9\\ud83d\\ude00\\\\\\\"x\",\"z\":\"a\\u0000b\",\"lone\":\"\\ud800\","
			  "\"\\u0061rgv\":[\"x\",\"y\"],\"n\":-42,\"f\":1.5,\"big\":12345678901234567890}";
	struct jtok *t;
	int n = parse(doc, strlen(doc), &t);
	CHECK(n > 0, "decoding document refused");
	if (n <= 0)
		return;
	char *s = json_strdup(doc, t, json_get(doc, t, 0, "s"));
	CHECK(s && strcmp(s, "\xc3\xa9\xf0\x9f\x98\x80\\\"x") == 0, "decoded %s", s ? s : "(null)");
	free(s);
	CHECK(json_strdup(doc, t, json_get(doc, t, 0, "z")) == NULL, "\\u0000 must be refused");
	s = json_strdup(doc, t, json_get(doc, t, 0, "lone"));
	CHECK(s && strcmp(s, "\xed\xa0\x80") == 0, "lone surrogate decoded as %s", s ? s : "(null)");
	free(s);
	char **v = json_strv(doc, t, json_get(doc, t, 0, "argv"));
	CHECK(v && v[0] && v[1] && !v[2] && strcmp(v[0], "x") == 0 && strcmp(v[1], "y") == 0, "escaped key lookup");
	strv_free(v);
	long long x = 0;
	CHECK(json_int(doc, t, json_get(doc, t, 0, "n"), -100, 100, &x) == 0 && x == -42, "int -42");
	CHECK(json_int(doc, t, json_get(doc, t, 0, "n"), 0, 100, &x) < 0, "range check");
	CHECK(json_int(doc, t, json_get(doc, t, 0, "f"), -100, 100, &x) < 0, "fraction is not an integer");
	CHECK(json_int(doc, t, json_get(doc, t, 0, "big"), 0, 0x7fffffffffffffffLL, &x) < 0, "overflow refused");
	CHECK(json_get(doc, t, 0, "missing") < 0, "missing key");
	free(t);
}

/* xorshift64: reproducible without libc's rand() state. */
static unsigned long long rng = 0x9e3779b97f4a7c15ULL;
static unsigned long long next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void fuzz(long iterations)
{
	static const char alphabet[] = "{}[]\",:\\u0123456789abcdefEe+-. \t\nntrufls\x01\x7f\xc3\xa9";
	char buf[4096];
	long accepted = 0;
	for (long it = 0; it < iterations; it++) {
		const char *seed = valid[next() % ARRAY_LEN(valid)];
		size_t len = strlen(seed);
		memcpy(buf, seed, len);
		int edits = 1 + (int)(next() % 8);
		for (int e = 0; e < edits; e++) {
			size_t pos = len ? next() % (len + 1) : 0;
			char c = alphabet[next() % (sizeof alphabet - 1)];
			switch (next() % 5) {
			case 0: /* replace */
				if (pos < len)
					buf[pos] = c;
				break;
			case 1: /* insert */
				if (len < sizeof buf - 1) {
					memmove(buf + pos + 1, buf + pos, len - pos);
					buf[pos] = c;
					len++;
				}
				break;
			case 2: /* delete */
				if (pos < len) {
					memmove(buf + pos, buf + pos + 1, len - pos - 1);
					len--;
				}
				break;
			case 3: /* truncate */
				len = pos;
				break;
			default: { /* duplicate a slice (nesting, repetition) */
				size_t from = len ? next() % len : 0, n = len ? next() % (len - from + 1) : 0;
				if (len + n < sizeof buf) {
					memmove(buf + pos + n, buf + pos, len - pos);
					memmove(buf + pos, buf + (from < pos ? from : from + n), n); /* overlap: garbled, still input */
					len += n;
				}
			}
			}
		}
		if (parse(buf, len, NULL) > 0)
			accepted++;
	}
	printf("json fuzz: %ld inputs, %ld accepted as valid JSON\n", iterations, accepted);
	CHECK(accepted > 0 && accepted < iterations, "the mutator should produce both valid and invalid inputs");
}

int main(int argc, char **argv)
{
	long iterations = argc > 1 ? atol(argv[1]) : 200000;
	known();
	decoding();
	fuzz(iterations);
	if (failures) {
		fprintf(stderr, "%d failure(s)\n", failures);
		return 1;
	}
	puts("json: all checks passed");
	return 0;
}
