/*
 * A small, strict JSON parser for the image config and the agent's requests. It never allocates
 * while parsing: it fills a caller-provided token array in document order, validates the whole
 * input (RFC 8259 grammar, depth limit), and leaves decoding of strings to the accessors.
 * Everything is bounded by the input length and the token array, so hostile input can only be
 * refused, never make it read or write out of bounds (guest/test/json_fuzz.c checks this).
 */
#ifndef BALE_JSON_H
#define BALE_JSON_H

#include <stddef.h>

enum jtype { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ };

struct jtok {
	unsigned char type;
	int start, end; /* byte offsets of the value; strings exclude the quotes */
	int size;       /* array elements or object members */
	int next;       /* index of the first token after this value's subtree */
};

/* Nesting deeper than this is refused: our documents are two levels deep, and the parser
 * recurses once per level, so the limit is also its stack bound. */
#define JSON_MAX_DEPTH 32

/* Parse `len` bytes. Returns the number of tokens (token 0 is the root) or -1 if the input is not
 * one valid JSON value or needs more than `max` tokens. */
int json_parse(const char *s, size_t len, struct jtok *t, int max);

/* The member `key` of object token `obj`, or -1. */
int json_get(const char *s, const struct jtok *t, int obj, const char *key);
/* Decode string token `i` into a malloc'd C string; NULL if not a string or it contains \u0000. */
char *json_strdup(const char *s, const struct jtok *t, int i);
/* An array of strings as a malloc'd NULL-terminated vector; NULL if any element is not a string
 * or contains \u0000. A JSON null gives an empty vector (image configs write "Entrypoint": null). */
char **json_strv(const char *s, const struct jtok *t, int i);
/* An integer in [lo, hi]; returns 0 and sets *out, or -1. */
int json_int(const char *s, const struct jtok *t, int i, long long lo, long long hi, long long *out);
/* true/false; returns 0 and sets *out, or -1. */
int json_bool(const char *s, const struct jtok *t, int i, int *out);

#endif
