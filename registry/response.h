/* One HTTP exchange's response: the headers the client acts on, and a body
 * writer that says where a successful body goes (private to registry/).
 * Error bodies always go to memory, bounded, so that they can be reported. */
#pragma once

#include "registry.h"

#define ERROR_BODY_MAX_SIZE (64u << 10)

struct response;

/* Where the body of a 2xx response goes. */
struct body_writer {
	/* Takes the next piece of the body: returns len to go on; any other
	 * value stops the transfer (see too_big, write_errno, stopped_early). */
	size_t (*write)(struct response *r, const char *buf, size_t len);
	/* Before each attempt: forgets what an earlier attempt wrote. */
	int (*restart)(struct response *r);
};

struct response {
	long status;
	char *www_authenticate;
	char *content_type;
	char *docker_digest;
	char *location;
	char *content_range;
	/* Where the request ended when it was redirected. */
	char *effective_url;
	long retry_after;
	const struct body_writer *writer;
	/* The memory writer's body; an error body with any writer. */
	char *body;
	size_t body_len, body_cap, body_max;
	bool too_big;
	/* The writer has what it wanted before the body ended: a range out of
	 * a whole blob, or parts the multi-range writer could not use (what is
	 * missing is then fetched alone).  Not an error. */
	bool stopped_early;
	int write_errno;
	struct {
		int fd;
		uint64_t written;
		int64_t max;
		struct digester *digester;
		/* Told how many bytes are in the file each time more came. */
		void (*arrived)(void *ctx, uint64_t written);
		void *arrived_ctx;
		/* An attempt after a transfer broke off continues where it
		 * stopped, with a Range request (resume_range), where the
		 * answer is that range; otherwise it starts over. */
		uint64_t resume_from;
		bool attempt_started, discarding;
	} file;
	/* A Range header the next attempt sends instead of the caller's, to
	 * continue a body; empty: none. */
	char resume_range[64];
	struct {
		unsigned char *buf;
		size_t len, got;
		uint64_t off;  /* where the range starts in the blob */
		uint64_t skip; /* bytes still to drop when the server sent the whole blob */
		/* Told how many bytes are in buf each time more came. */
		void (*arrived)(void *ctx, size_t got);
		void *arrived_ctx;
	} range;
	struct {
		struct byterange *ranges;
		size_t n;
		struct byteranges *parser;
		/* Told each time more bytes came, as the ranges' got say. */
		void (*arrived)(void *ctx);
		void *arrived_ctx;
	} multi;
};

/* The writers: each sets up r (which needs no other initialisation). */
void response_to_memory(struct response *r, size_t max);
/* Streams into fd, at most max bytes (-1: no bound), through digester. */
void response_to_file(struct response *r, int fd, int64_t max, struct digester *digester);
/* Exactly len bytes from blob offset off into buf, out of a 206 or a 200. */
void response_to_range(struct response *r, void *buf, size_t len, uint64_t off);
/* The parts of a multi-range request into ranges[i].buf, counted in .got. */
void response_to_ranges(struct response *r, struct byterange *ranges, size_t n);

/* Before each attempt; -errno when the writer cannot start again. */
int response_restart(struct response *r);
/* Frees what the response holds; what the writer delivered stays. */
void response_done(struct response *r);

/* libcurl's CURLOPT_HEADERFUNCTION and CURLOPT_WRITEFUNCTION, with the
 * response as their data. */
size_t response_header_cb(char *buf, size_t size, size_t n, void *userdata);
size_t response_body_cb(char *buf, size_t size, size_t n, void *userdata);
