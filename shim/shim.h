/* The shim's interface to launchers: the files it keeps in a container's
 * state directory, the attach protocol and the start-up report.
 *
 * The shim supervises one container through an OCI runtime; it knows
 * nothing of images.  A launcher starts it, reads its report on the sync
 * pipe (fd 3 of the shim), and later talks to it through these files only. */
#pragma once

/* Files in the state directory. */
#define SHIM_ATTACH_SOCKET "attach" /* SOCK_SEQPACKET, see below */
#define SHIM_CTL_FIFO "ctl"         /* "resize ROWS COLS\n" or "kill SIGNAL\n" */
#define SHIM_LOG_FILE "ctr.log"     /* k8s-file: "TIME STREAM F|P TEXT\n" */
#define SHIM_EXIT_FILE "exit"       /* the exit code, written once the output is drained */
#define SHIM_PID_FILE "pid"         /* the container's init, as the runtime reported it */
#define SHIM_SHIM_PID_FILE "shim.pid"
/* The container's slirp4netns (launch started it): ended with the container. */
#define SHIM_NETWORK_PID_FILE "slirp4netns.pid"
#define SHIM_RUNTIME_LOG "runtime.log"
/* While writes to the log fail, why (strerror text and a newline); all
 * zeros otherwise.  Its SHIM_LOG_ERROR_SIZE bytes are allocated up front. */
#define SHIM_LOG_ERROR_FILE "log-error"
/* Beside the containers' state directories (ROOT/exits/ID): the exit code
 * of a --rm container, whose state directory is gone, for launch wait. */
#define SHIM_EXITS_DIR "exits"
#define SHIM_LOG_ERROR_SIZE 256

/* Attach: every packet from the shim is one tag byte and its payload; every
 * packet to the shim is raw stdin.  A client that shuts down its writing
 * side ends the container's stdin (unless the shim runs with
 * --leave-stdin-open); one that closes the socket only detaches. */
enum shim_attach_tag {
	SHIM_TAG_STDOUT = 1,
	SHIM_TAG_STDERR = 2,
	SHIM_TAG_EXIT = 3, /* payload: the exit code in decimal; the last packet */
};
#define SHIM_PACKET_MAX 32768

/* The sync pipe carries lines: "ready" once the attach socket listens (with
 * --wait-attach not one byte of output is read before the first attach: the
 * container starts after it, or with a terminal its output waits in the
 * pty), then "started PID"; or at any point
 * "error CODE MESSAGE" where CODE is the exit code a launcher should return
 * (125 runtime or shim failure, 126 command cannot be run, 127 command not
 * found). */
#define SHIM_SYNC_FD 3
/* With --create-first the report "created PID" comes before "started": the
 * container exists (its namespaces too) and waits until the launcher writes
 * one byte on this descriptor; closing it instead stops the start. */
#define SHIM_GO_FD 4
