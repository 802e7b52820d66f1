/*
 * The agent: the host's channel into the guest (docs/agent-protocol.md). It runs inside PID 1's
 * single poll loop (loop.c), so one place owns every waitpid() and the exit status of a process
 * the agent started always reaches its exec session, never the zombie reaper.
 */
#ifndef BALE_AGENT_H
#define BALE_AGENT_H

#include <poll.h>
#include <sys/types.h>

/* Defaults an exec inherits from the image config (env, user, working directory). */
struct image_defaults {
	char **env;
	const char *user;
	const char *workdir;
};
extern struct image_defaults g_image;

/* Open every virtio port named org.bale.agent or org.bale.agent.<suffix>; returns how many. */
int agent_open_vports(void);
/* Host testing: listen on a unix socket; each accepted connection is one host channel. */
int agent_listen(const char *path);

/* What a pollfd belongs to, so the loop can hand readiness back to its owner. */
struct pref {
	int kind;
	void *ptr;
	int which;
};
int agent_fill_poll(struct pollfd *pfd, struct pref *ref, int max);
void agent_on_poll(const struct pref *ref, short revents);
/* Work that needs no readiness (reading regular files, finishing exited sessions). Returns 1
 * when more is pending, so the loop polls without sleeping. */
int agent_progress(void);
/* Milliseconds until the agent needs a wakeup without any fd event (-1: none). */
int agent_timeout_ms(void);
void agent_flush(void);
int agent_tx_pending(void);
void agent_on_sigio(void);
/* The loop reaped `pid`; returns 1 if it was an exec session (its status goes to the host). */
int agent_child_exited(pid_t pid, int status);
void agent_main_exited(int status);
/* Pids of running exec sessions (host mode kills these instead of kill(-1)). */
int agent_session_pids(pid_t *out, int max);

/* Provided by loop.c. */
int lifecycle_accepting_execs(void);
pid_t lifecycle_main_pid(void);
/* 1 and *status when the main process has exited. */
int lifecycle_main_status(int *status);
void lifecycle_shutdown(int timeout_ms);
int lifecycle_die_with_parent(void);

#endif
