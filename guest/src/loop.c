/*
 * PID 1's event loop and lifecycle. One poll() over a signalfd and the agent's descriptors:
 * this is the only place that calls waitpid(), so every exit status goes to its owner (the main
 * process, an exec session, or nobody for reparented orphans) and none is stolen.
 *
 * Lifecycle: RUN -> (shutdown request: STOP_MAIN, TERM then KILL the main at its deadline) ->
 * main exits -> TERM_ALL (TERM everything, wait) -> KILL_ALL (KILL what is left, wait) ->
 * FLUSH (let the host read the last frames) -> DONE. Each wait is bounded.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent.h"
#include "common.h"
#include "loop.h"

/* After the main process exits, the rest get this long to stop on SIGTERM before SIGKILL:
 * Docker's `stop` gives 10 s to a process that was asked to stop; here they are leftovers of a
 * program that already ended, and the VM's exit should not wait on them long. */
#define TERM_GRACE_MS 2000
/* SIGKILL cannot be refused; this only covers processes stuck in uninterruptible I/O. */
#define KILL_GRACE_MS 1000
/* Time for the host to read the final frames (exec exits, the main-exit event). */
#define FLUSH_GRACE_MS 500

enum { RUN, STOP_MAIN, TERM_ALL, KILL_ALL, FLUSH, DONE };

static struct {
	int sfd;
	int pid1;
	int die_with_parent;
	int phase;
	int64_t deadline;
	pid_t main_pid; /* 0: none (agent only) or reaped */
	int has_main;
	int main_done, main_status;
} L = { .sfd = -1 };

int lifecycle_accepting_execs(void)
{
	return L.phase == RUN;
}

pid_t lifecycle_main_pid(void)
{
	return L.main_done ? 0 : L.main_pid;
}

int lifecycle_main_status(int *status)
{
	if (L.main_done)
		*status = L.main_status;
	return L.main_done;
}

int lifecycle_die_with_parent(void)
{
	return L.die_with_parent;
}

/* Signal everything but ourselves. As PID 1 (in the VM, or of a test's PID namespace) that is
 * kill(-1); on the host it is only the processes we started, never the host's. */
static void kill_all(int sig)
{
	if (L.pid1) {
		(void)kill(-1, sig);
		return;
	}
	pid_t pids[64];
	int n = agent_session_pids(pids, (int)ARRAY_LEN(pids));
	for (int i = 0; i < n; i++)
		(void)kill(pids[i], sig);
	if (L.main_pid > 0 && !L.main_done)
		(void)kill(L.main_pid, sig);
}

static void enter(int phase, int ms)
{
	L.phase = phase;
	L.deadline = ms >= 0 ? now_ms() + ms : -1;
	if (phase == TERM_ALL)
		kill_all(SIGTERM);
	else if (phase == KILL_ALL)
		kill_all(SIGKILL);
}

void lifecycle_shutdown(int timeout_ms)
{
	if (L.phase != RUN)
		return;
	if (L.has_main && !L.main_done) {
		/* Like `docker stop`: TERM, and KILL when the grace period is over. */
		(void)kill(L.main_pid, SIGTERM);
		enter(STOP_MAIN, timeout_ms);
	} else {
		enter(TERM_ALL, TERM_GRACE_MS);
	}
}

static void main_exited(int status)
{
	L.main_done = 1;
	L.main_status = status;
	if (WIFSIGNALED(status))
		say("signal %d", WTERMSIG(status));
	else
		say("exit status %d", WIFEXITED(status) ? WEXITSTATUS(status) : 255);
	agent_main_exited(status);
	if (L.phase == RUN || L.phase == STOP_MAIN)
		enter(TERM_ALL, TERM_GRACE_MS);
}

static void reap(void)
{
	for (;;) {
		int st;
		pid_t pid = waitpid(-1, &st, WNOHANG);
		if (pid <= 0)
			break;
		if (L.has_main && pid == L.main_pid && !L.main_done)
			main_exited(st);
		else
			(void)agent_child_exited(pid, st); /* otherwise an orphan: reaped, nothing to report */
	}
}

static int no_children(void)
{
	if (!L.pid1) {
		pid_t pids[1];
		return agent_session_pids(pids, 1) == 0 && (!L.has_main || L.main_done);
	}
	/* WNOWAIT: only look. Reaping here could take the status of an exec whose SIGCHLD is
	 * still queued in the signalfd. */
	siginfo_t si;
	memset(&si, 0, sizeof si);
	return waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0 && errno == ECHILD;
}

static void on_signal(const struct signalfd_siginfo *si)
{
	int sig = (int)si->ssi_signo;
	switch (sig) {
	case SIGCHLD:
		reap();
		return;
	case SIGIO:
		agent_on_sigio();
		return;
	default:
		break;
	}
	/* Everything else is meant for the program the VM runs (Docker forwards the same way). */
	if (L.has_main && !L.main_done) {
		(void)kill(L.main_pid, sig);
		return;
	}
	if (!L.has_main && (sig == SIGTERM || sig == SIGINT))
		lifecycle_shutdown(0);
}

int loop_init(int pid1, int die_with_parent)
{
	L.pid1 = pid1;
	L.die_with_parent = die_with_parent;
	L.phase = RUN;
	/* The agent writes to pipes and sockets whose readers may be gone: EPIPE, not death. */
	signal(SIGPIPE, SIG_IGN);
	sigset_t set;
	sigemptyset(&set);
	static const int sigs[] = { SIGCHLD, SIGIO, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGPWR };
	for (size_t i = 0; i < ARRAY_LEN(sigs); i++)
		sigaddset(&set, sigs[i]);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -errno;
	L.sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	return L.sfd < 0 ? -errno : 0;
}

void loop_set_main(pid_t pid)
{
	L.has_main = 1;
	L.main_pid = pid;
}

void loop_set_main_failed(int status)
{
	L.has_main = 1;
	L.main_pid = 0;
	main_exited(status);
}

/* Move the lifecycle on when its condition or deadline is met; 1 if the phase changed (the
 * next phase may be ready at once, and must not wait for a poll timeout). */
static int tick(void)
{
	int64_t now = now_ms();
	int late = L.deadline >= 0 && now >= L.deadline;
	int phase = L.phase;
	switch (L.phase) {
	case STOP_MAIN:
		if (late) {
			(void)kill(L.main_pid, SIGKILL);
			L.deadline = -1; /* the main's exit moves us on */
		}
		break;
	case TERM_ALL:
		if (no_children())
			enter(FLUSH, FLUSH_GRACE_MS);
		else if (late)
			enter(KILL_ALL, KILL_GRACE_MS);
		break;
	case KILL_ALL:
		if (no_children() || late)
			enter(FLUSH, FLUSH_GRACE_MS);
		break;
	case FLUSH:
		/* Exec sessions whose process is gone may still be handing the host their last
		 * output; finish when nothing is queued or the grace period is over. */
		if ((!agent_tx_pending() && !agent_progress()) || late)
			L.phase = DONE;
		break;
	}
	return L.phase != phase;
}

/* Room for the signalfd plus everything the agent polls (8 connections, 64 sessions x 3). */
#define MAX_POLL 256

int loop_run(void)
{
	struct pollfd pfd[MAX_POLL];
	struct pref ref[MAX_POLL];
	while (L.phase != DONE) {
		int more = agent_progress();
		agent_flush();
		while (tick())
			;
		if (L.phase == DONE)
			break;
		pfd[0] = (struct pollfd){ .fd = L.sfd, .events = POLLIN };
		int n = 1 + agent_fill_poll(pfd + 1, ref + 1, MAX_POLL - 1);
		int timeout = more ? 0 : agent_timeout_ms();
		if (L.deadline >= 0) {
			int64_t left = L.deadline - now_ms();
			if (left < 0)
				left = 0;
			if (timeout < 0 || left < timeout)
				timeout = (int)left;
		}
		if (L.phase == TERM_ALL || L.phase == KILL_ALL) {
			/* Orphans reparented to PID 1 raise SIGCHLD too, but a child of ours that
			 * exits before we notice still needs a recheck: 50 ms keeps this prompt. */
			if (timeout < 0 || timeout > 50)
				timeout = 50;
		}
		int r = poll(pfd, (nfds_t)n, timeout);
		if (r < 0 && errno != EINTR)
			return -errno;
		if (r <= 0)
			continue;
		if (pfd[0].revents & POLLIN) {
			struct signalfd_siginfo si;
			while (read(L.sfd, &si, sizeof si) == (ssize_t)sizeof si)
				on_signal(&si);
		}
		for (int i = 1; i < n; i++)
			if (pfd[i].revents)
				agent_on_poll(&ref[i], pfd[i].revents);
	}
	agent_flush();
	return 0;
}
