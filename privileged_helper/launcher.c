/*
 * rootless-groot-quota: the setuid-root launcher of rootless-groot's quota helper.
 *
 * The kernel ignores setuid on scripts, so this tiny program is what is installed setuid
 * root. It trusts nothing it inherits: it takes no arguments (argc must be exactly 1, and
 * argv is never read), ensures fds 0-2 are open, clears the environment, closes every other
 * fd, resets signals and resource limits, refuses to run unless every file and directory it
 * is about to hand control to is root-owned and writable by root only, and then executes
 * the system Python in isolated mode on the helper:
 *     /usr/bin/python3 -I -S -B HELPER_DIR/privileged_helper/__main__.py
 * The real uid stays the caller's: that is how the helper knows who asks.
 * No NSS, no locale, no PATH search. Build: `make helper`; install: `make install-helper`.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef HELPER_DIR
#define HELPER_DIR "/usr/local/libexec/rootless-groot"
#endif
#ifndef PYTHON
#define PYTHON "/usr/bin/python3"
#endif
#define PACKAGE_DIR HELPER_DIR "/privileged_helper"
#define SCRIPT PACKAGE_DIR "/__main__.py"

extern char **environ;

static void refuse(const char *code)
{
	static const char head[] = "{\"error\":\"";
	static const char tail[] = "\",\"ok\":false}\n";
	ssize_t ignored;
	ignored = write(1, head, sizeof head - 1);
	ignored = write(1, code, strlen(code));
	ignored = write(1, tail, sizeof tail - 1);
	(void)ignored;
	_exit(1);
}

static int trusted_stat(const struct stat *st)
{
	return st->st_uid == 0 && !(st->st_mode & (S_IWGRP | S_IWOTH));
}

/* Every component of an absolute path (following nothing but the final python symlink). */
static void check_path(const char *path, int follow_last)
{
	char buf[4096];
	struct stat st;
	size_t len = strlen(path);
	if (len == 0 || len >= sizeof buf || path[0] != '/')
		refuse("failed");
	memcpy(buf, path, len + 1);
	for (size_t i = 1; i <= len; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		char saved = buf[i];
		buf[i] = '\0';
		int last = (saved == '\0');
		int r = (last && follow_last) ? stat(buf, &st) : lstat(buf, &st);
		if (r != 0 || !trusted_stat(&st) || (!last && !S_ISDIR(st.st_mode)))
			refuse("failed");
		buf[i] = saved;
	}
	if (lstat("/", &st) != 0 || !trusted_stat(&st))
		refuse("failed");
}

/* The package dir, its files and its __pycache__: all root-owned, none writable by others. */
static void check_tree(const char *dir, int depth)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0 || !trusted_stat(&st))
		refuse("failed");
	DIR *d = fdopendir(fd);
	if (!d)
		refuse("failed");
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		if (fstatat(fd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !trusted_stat(&st))
			refuse("failed");
		if (S_ISDIR(st.st_mode)) {
			char sub[4096];
			size_t a = strlen(dir), b = strlen(e->d_name);
			if (depth > 1 || a + b + 2 > sizeof sub)
				refuse("failed");
			memcpy(sub, dir, a);
			sub[a] = '/';
			memcpy(sub + a + 1, e->d_name, b + 1);
			check_tree(sub, depth + 1);
		} else if (!S_ISREG(st.st_mode)) {
			refuse("failed");
		}
	}
	closedir(d);
}

int main(int argc, char **argv)
{
	(void)argv; /* never read: with argc == 0, argv[1] would alias envp[0] (PwnKit) */

	/* fds 0-2 open (to /dev/null if they were closed), so nothing we open lands on them */
	for (int fd = 0; fd <= 2; fd++) {
		if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
			if (open("/dev/null", O_RDWR) != fd)
				_exit(127);
		}
	}
	if (clearenv() != 0)
		_exit(127);
	environ = NULL;
	if (syscall(SYS_close_range, 3U, ~0U, 0U) != 0) {
		long max = sysconf(_SC_OPEN_MAX);
		for (long fd = 3; fd < (max > 0 ? max : 65536); fd++)
			close((int)fd);
	}
	umask(077);
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
		_exit(127);
	struct rlimit zero = {0, 0}, inf = {RLIM_INFINITY, RLIM_INFINITY}, files = {1024, 1024},
		      stack = {8 << 20, 8 << 20};
	if (setrlimit(RLIMIT_CORE, &zero) || setrlimit(RLIMIT_FSIZE, &inf) || setrlimit(RLIMIT_NOFILE, &files) ||
	    setrlimit(RLIMIT_AS, &inf) || setrlimit(RLIMIT_DATA, &inf) || setrlimit(RLIMIT_STACK, &stack))
		refuse("failed");
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	if (chdir("/") != 0)
		_exit(127);

	if (argc != 1)
		refuse("invalid");
	if (geteuid() != 0)
		refuse("unsupported");

	check_path(PYTHON, 1);
	check_path(PACKAGE_DIR, 0);
	check_tree(PACKAGE_DIR, 0);
	check_path(SCRIPT, 0);

	char *const args[] = {"python3", "-I", "-S", "-B", SCRIPT, NULL};
	char *const env[] = {NULL};
	execve(PYTHON, args, env);
	refuse("failed");
	return 1;
}
