/*
 * Stage 1: /init in the initramfs that `bale kernel import` builds. Loads the kernel modules the
 * initramfs carries (virtio block, net, console...), mounts the root disk, switches root into it
 * and execs stage 2 (/.bale/init). Any failure prints one line on the console and powers off:
 * a VM that cannot boot must stop, not panic or loop.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

#ifndef MODULE_INIT_COMPRESSED_FILE
/* include/uapi/linux/module.h (5.17+): the kernel decompresses the module itself. */
#define MODULE_INIT_COMPRESSED_FILE 4
#endif
#define RAMFS_MAGIC 0x858458f6
#define TMPFS_MAGIC 0x01021994

/* How long to wait for the root disk's device node. virtio-blk probes while its module loads,
 * and devtmpfs adds the node moments later, so it is normally there at once; 5 s covers a slow
 * TCG host, and a disk that is really missing (wrong root=, no driver) still fails quickly with
 * a clear message instead of hanging the boot. */
#define ROOT_WAIT_MS 5000
#define ROOT_POLL_MS 5

#define NEWROOT "/newroot"

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
	char msg[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	say("stage 1: %s; powering off", msg);
	power_off();
}

static void load_modules(void)
{
	char *order;
	int e = read_file("/lib/modules/modules.order", 1024 * 1024, &order, NULL);
	if (e == -ENOENT)
		return; /* everything needed is built into the kernel */
	if (e)
		fail("/lib/modules/modules.order: %s", strerror(-e));
	for (char *save = NULL, *line = strtok_r(order, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		line += strspn(line, " \t");
		line[strcspn(line, " \t\r")] = 0;
		if (!*line || *line == '#')
			continue;
		char path[512];
		const char *base = strrchr(line, '/');
		/* One file name per line; a path like kernel/drivers/x.ko is taken by its name. */
		snprintf(path, sizeof path, "/lib/modules/%s", base ? base + 1 : line);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			say("module %s: %s", path, strerror(errno));
			continue;
		}
		size_t n = strlen(path);
		int flags = 0;
		if ((n > 3 && strcmp(path + n - 3, ".xz") == 0) || (n > 4 && strcmp(path + n - 4, ".zst") == 0) ||
		    (n > 3 && strcmp(path + n - 3, ".gz") == 0))
			flags |= MODULE_INIT_COMPRESSED_FILE;
		int64_t t0 = now_ms();
		if (syscall(SYS_finit_module, fd, "", flags) < 0 && errno != EEXIST)
			/* Keep going: the disk wait below says clearly if a needed one is missing. */
			say("module %s: %s", path, strerror(errno));
		else
			debug("module %s: %lld ms", path, (long long)(now_ms() - t0));
		close(fd);
	}
	free(order);
}

static void wait_for(const char *dev)
{
	int64_t until = now_ms() + ROOT_WAIT_MS;
	struct stat st;
	while (stat(dev, &st) < 0) {
		if (now_ms() >= until)
			fail("root device %s did not appear within %d s (is the disk attached and its driver in the initramfs?)",
			     dev, ROOT_WAIT_MS / 1000);
		struct timespec ts = { 0, ROOT_POLL_MS * 1000000L };
		nanosleep(&ts, NULL);
	}
	if (!S_ISBLK(st.st_mode))
		fail("root device %s is not a block device", dev);
}

/* Remove the initramfs (its memory is only freed once nothing references it), staying on its
 * own filesystem: the new root and the moved mounts are on other devices and are skipped. */
static void delete_tree(int dfd, dev_t rootdev)
{
	DIR *d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		struct stat st;
		if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || st.st_dev != rootdev)
			continue;
		if (S_ISDIR(st.st_mode)) {
			int sub = openat(dfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub >= 0)
				delete_tree(sub, rootdev);
			(void)unlinkat(dfd, e->d_name, AT_REMOVEDIR);
		} else {
			(void)unlinkat(dfd, e->d_name, 0);
		}
	}
	closedir(d);
}

static void mount_early(const char *target, const char *type, unsigned long flags, const char *data)
{
	(void)mkdir(target, 0755);
	if (mount(type, target, type, flags, data) < 0 && errno != EBUSY)
		fail("mount %s: %s", target, strerror(errno));
}

int stage1_main(const char *cmdline_override, char *const stage2_args[])
{
	if (getpid() != 1) {
		fprintf(stderr, "bale-init: stage 1 runs only as PID 1 (of a VM or a PID namespace)\n");
		return 2;
	}
	mount_early("/dev", "devtmpfs", MS_NOSUID, "mode=0755");
	/* Without /dev/console in the initramfs the kernel started us with no stdio at all. */
	if (fcntl(2, F_GETFD) < 0) {
		int fd = open("/dev/console", O_RDWR | O_NOCTTY);
		if (fd >= 0) {
			for (int i = 0; i < 3; i++)
				if (fd != i)
					dup2(fd, i);
			if (fd > 2)
				close(fd);
		}
	}
	g_console_fd = 2;
	mount_early("/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
	mount_early("/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);

	char *cmdline;
	if (cmdline_override)
		cmdline = xstrdup(cmdline_override);
	else if (read_file("/proc/cmdline", 4096, &cmdline, NULL) < 0)
		cmdline = xstrdup("");
	char root[256], fstype[64], flagsbuf[512], tmp[8];
	g_debug = cmdline_get(cmdline, "bale.debug", tmp, sizeof tmp) != NULL;
	debug("stage 1 at %lld ms", (long long)now_ms());

	load_modules();
	debug("modules loaded at %lld ms", (long long)now_ms());

	if (!cmdline_get(cmdline, "root", root, sizeof root))
		snprintf(root, sizeof root, "/dev/vda");
	if (!cmdline_get(cmdline, "rootfstype", fstype, sizeof fstype))
		snprintf(fstype, sizeof fstype, "ext4");
	const char *rootflags = cmdline_get(cmdline, "rootflags", flagsbuf, sizeof flagsbuf);
	/* Writable unless `ro` is given: the runtime's root disk is a per-VM overlay, and
	 * programs expect to write where a container would let them. */
	unsigned long mflags = 0;
	if (cmdline_get(cmdline, "ro", tmp, sizeof tmp) && !cmdline_get(cmdline, "rw", tmp, sizeof tmp))
		mflags |= MS_RDONLY;
	if (strncmp(root, "/dev/", 5) != 0)
		fail("root=%s: only /dev/ paths are supported (the runtime passes root=/dev/vda)", root);

	wait_for(root);
	debug("root device at %lld ms", (long long)now_ms());
	(void)mkdir(NEWROOT, 0755);
	if (mount(root, NEWROOT, fstype, mflags, rootflags) < 0)
		fail("mount %s (%s) on %s: %s", root, fstype, NEWROOT, strerror(errno));
	if (access(NEWROOT "/.bale/init", X_OK) < 0)
		fail("%s has no executable /.bale/init (%s); is it a bale bundle's rootfs?", root, strerror(errno));

	static const char *const moves[] = { "/dev", "/proc", "/sys" };
	for (size_t i = 0; i < ARRAY_LEN(moves); i++) {
		char target[64];
		snprintf(target, sizeof target, NEWROOT "%s", moves[i]);
		struct stat st;
		/* Stage 2 mounts them itself where the image has no directory to move them to. */
		if (stat(target, &st) < 0 || !S_ISDIR(st.st_mode) || mount(moves[i], target, NULL, MS_MOVE, NULL) < 0)
			(void)umount2(moves[i], MNT_DETACH);
	}

	/* switch_root, as busybox does it: empty the initramfs (only if it really is one, never a
	 * disk), move the new root over /, chroot into it. */
	if (chdir(NEWROOT) < 0)
		fail("chdir %s: %s", NEWROOT, strerror(errno));
	struct statfs sf;
	struct stat rst;
	if (statfs("/", &sf) == 0 && (sf.f_type == RAMFS_MAGIC || sf.f_type == TMPFS_MAGIC) && stat("/", &rst) == 0) {
		int dfd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0)
			delete_tree(dfd, rst.st_dev);
	}
	if (mount(".", "/", NULL, MS_MOVE, NULL) < 0)
		fail("move %s to /: %s", NEWROOT, strerror(errno));
	if (chroot(".") < 0 || chdir("/") < 0)
		fail("chroot %s: %s", NEWROOT, strerror(errno));
	debug("switch_root at %lld ms", (long long)now_ms());
	free(cmdline);

	size_t n = strv_len((char **)stage2_args);
	char **argv = xmalloc(sizeof(char *) * (n + 2));
	argv[0] = "/.bale/init";
	for (size_t i = 0; i < n; i++)
		argv[i + 1] = stage2_args[i];
	argv[n + 1] = NULL;
	execv("/.bale/init", argv);
	fail("exec /.bale/init: %s", strerror(errno));
}
