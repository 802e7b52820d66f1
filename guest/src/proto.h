/*
 * The bale agent protocol, guest side constants. docs/agent-protocol.md is the specification;
 * src/runtime/agent/protocol.ts mirrors these numbers for the host. Change all three together.
 */
#ifndef BALE_PROTO_H
#define BALE_PROTO_H

/* Every frame starts with these two bytes so that a receiver that lost its place (garbage, a
 * half frame left over from a previous host connection) can find the next frame again. */
#define PROTO_MAGIC0 0xBA
#define PROTO_MAGIC1 0x1E
/* Carried in every frame header; a frame of another version is refused. */
#define PROTO_VERSION 1

/* magic(2) version(1) type(1) id(4, big-endian) length(4, big-endian) */
#define FRAME_HDR 12

/* Largest payload: 64 KiB is the default Linux pipe capacity, so one read of a child's pipe fills
 * at most one frame; it bounds the agent's receive buffer (one per connection, never sized by the
 * peer); and it caps how long one stream's chunk can hold the single channel before another
 * session's frame gets through. */
#define FRAME_MAX_PAYLOAD 65536

/* Credit each side grants the other per exec session, in payload bytes: stdin bytes the host may
 * send before the guest acknowledges them, and stdout+stderr bytes the guest may send before the
 * host acknowledges them. Four full frames keep a pipe busy while acknowledgements travel back,
 * and the guest's worst case stays 256 KiB of queued stdin per session. */
#define STREAM_WINDOW (4 * FRAME_MAX_PAYLOAD)

/* host -> guest */
#define T_HELLO 0x01      /* JSON {"protocol":1} -> OK {protocol, agent, capabilities, ...} */
#define T_PING 0x02       /* any bytes -> OK with the same bytes */
#define T_EXEC 0x03       /* JSON {argv, env?, cwd?, user?, stdin?} -> OK {"pid":N}, then streams */
#define T_INPUT 0x04      /* bytes for exec stdin or a file being written; empty = end */
#define T_SIGNAL 0x05     /* JSON {"target":execId,"signal":N} -> OK */
#define T_WRITE_FILE 0x06 /* JSON {path, mode?, uid?, gid?}, then INPUT frames -> OK {"size":N} */
#define T_READ_FILE 0x07  /* JSON {path} -> DATA frames, then OK {"size":N} */
#define T_SHUTDOWN 0x08   /* JSON {"timeoutMs":N?} -> OK, then the guest stops */
#define T_ACK 0x09        /* 4 bytes: stdout+stderr bytes of exec `id` the host consumed */

/* guest -> host */
#define T_OK 0x80
#define T_ERROR 0x81  /* JSON {"code":"ENOENT","message":"..."} */
#define T_STDOUT 0x82 /* bytes; empty = end of stream */
#define T_STDERR 0x83
#define T_DATA 0x84   /* file bytes for READ_FILE */
#define T_EXIT 0x85   /* JSON {"code":N} or {"signal":N} */
#define T_EVENT 0x86  /* id 0, JSON {"event":"main-exit","code":N} or {"event":"main-exit","signal":N} */
#define T_WINDOW 0x87 /* 4 bytes: stdin bytes of exec `id` the guest wrote to the child */

#endif
