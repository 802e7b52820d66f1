/*
 * bale-init: one static binary, two roles (see guest/README.md).
 *   stage 1 - PID 1 started as /init from the initramfs: mount the root disk, switch_root.
 *   stage 2 - PID 1 started as /.bale/init in the image: run the entrypoint, serve the agent.
 * Flags select a role explicitly and adapt stage 2 for running on a host in tests.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"

static void usage(FILE *f)
{
	fputs("usage: bale-init --version\n"
	      "       bale-init [--stage1 | --stage2] [options]\n"
	      "Role without flags: PID 1 named /init is stage 1; named /.bale/init is stage 2.\n"
	      "  --config PATH        image config (default /.bale/config.json)\n"
	      "  --cmdline STRING     kernel command line to use instead of /proc/cmdline\n"
	      "  --agent-listen PATH  serve the agent on a unix socket instead of the virtio port\n"
	      "  --console PATH|-     where the entrypoint's output and bale-init's lines go\n"
	      "                       (default /dev/console; '-' is stdout)\n"
	      "  --agent-only         run no entrypoint; serve the agent until shutdown\n"
	      "  --no-system          no mounts, hostname, /etc files or network (host testing)\n"
	      "  --no-poweroff        exit with the entrypoint's status instead of powering off\n",
	      f);
}

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && strcmp(s + n - m, suffix) == 0;
}

int main(int argc, char **argv)
{
	const char *arg0 = argc > 0 ? argv[0] : "";
	int stage = 0, explicit = 0;
	const char *cmdline = NULL;
	struct stage2_opts o = { 0 };

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *val = i + 1 < argc ? argv[i + 1] : NULL;
		if (strcmp(a, "--version") == 0) {
			puts(BALE_AGENT_VERSION);
			return 0;
		} else if (strcmp(a, "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(a, "--stage1") == 0) {
			stage = 1;
			explicit = 1;
		} else if (strcmp(a, "--stage2") == 0) {
			stage = 2;
			explicit = 1;
		} else if (strcmp(a, "--agent-only") == 0) {
			o.agent_only = 1;
			explicit = 1;
		} else if (strcmp(a, "--no-system") == 0) {
			o.no_system = 1;
		} else if (strcmp(a, "--no-poweroff") == 0) {
			o.no_poweroff = 1;
		} else if (val && strcmp(a, "--config") == 0) {
			o.config_path = argv[++i];
		} else if (val && strcmp(a, "--cmdline") == 0) {
			cmdline = argv[++i];
		} else if (val && strcmp(a, "--agent-listen") == 0) {
			o.agent_listen = argv[++i];
		} else if (val && strcmp(a, "--console") == 0) {
			o.console = argv[++i];
		} else if (explicit || (getpid() != 1)) {
			/* As PID 1 the kernel may hand over stray command-line words: ignore those. */
			fprintf(stderr, "bale-init: unknown argument %s\n", a);
			usage(stderr);
			return 2;
		}
	}
	o.cmdline = cmdline;

	if (!stage) {
		if (getpid() == 1 && strcmp(arg0, "/init") == 0)
			stage = 1;
		else if (ends_with(arg0, "/.bale/init") || o.agent_only)
			stage = 2;
	}
	if (stage == 1) {
		/* Stage 2 gets our flags (minus the role) when a test started us explicitly; from the
		 * kernel it gets none. */
		char **rest = calloc((size_t)argc + 1, sizeof(char *));
		int n = 0;
		for (int i = 1; explicit && rest && i < argc; i++)
			if (strcmp(argv[i], "--stage1") != 0)
				rest[n++] = argv[i];
		return stage1_main(cmdline, rest);
	}
	if (stage == 2)
		return stage2_main(&o);
	usage(stderr);
	return 2;
}
