/* PID 1's event loop (loop.c): signals, reaping, the agent, and the shutdown sequence. */
#ifndef BALE_LOOP_H
#define BALE_LOOP_H

#include <sys/types.h>

/* pid1: we are PID 1 (of the VM or of a PID namespace), so kill(-1) reaches exactly the
 * processes to stop. die_with_parent: children get PR_SET_PDEATHSIG (host testing). */
int loop_init(int pid1, int die_with_parent);
void loop_set_main(pid_t pid);
/* The main process could not even be forked: report `status` as its exit. */
void loop_set_main_failed(int status);
/* Run until the shutdown sequence is complete. 0 or -errno. */
int loop_run(void);

#endif
