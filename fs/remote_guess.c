/* The package guess of a layer read through an index (py_package.h): the
 * first module of a Python package that is read has the package's modules
 * fetched in the background, as a prefetch list's, on connections of
 * their own, while the interpreter runs the one it read.  The same thread
 * fetches the windows of a program or library read on from its head. */
#include "remote_blob_internal.h"

#include "py_package.h"
#include "registry.h"

#define QUEUE_LEN 16
#define GUESS_FILES 2048
/* Of each file: a module whole, an extension module's headers and tables. */
#define GUESS_HEAD (512u << 10)
/* Of the blob, per package: decoding a file reads from the checkpoint
 * before it, so a package's modules cost more of the blob than their own
 * size. */
#define GUESS_BYTES (8ull << 20)
/* All guesses of one layer: past this a workload reads far more than a
 * start does, and guessing only competes with its reads. */
#define LAYER_BYTES (64ull << 20)

struct remote_guess {
	struct layer *l;
	struct py_packages *packages;
	struct fetch_connections connections; /* kept from one guess to the next */
	pthread_mutex_t lock;                 /* over the fields below */
	pthread_cond_t wake;
	const struct entry *queue[QUEUE_LEN];
	/* Not 0: the windows of e's checkpoints before this offset of the
	 * blob only, not its package. */
	uint64_t windows_end[QUEUE_LEN];
	size_t queue_head, queue_len;
	bool started;
	uint64_t spent; /* of LAYER_BYTES; the thread's own */
	atomic_bool stop;
	pthread_t thread;
};

int remote_guess_new(struct layer *l, const struct registry_client *client, const struct registry_client *window_client,
		     struct remote_guess **ret)
{
	*ret = NULL;
	if (!client)
		return 0;
	struct py_packages *packages = NULL;
	int r = py_packages_new(l->entries, l->n_entries, &packages);
	if (r < 0 || (!packages && !window_client))
		return r;
	struct remote_guess *g = calloc(1, sizeof(*g));
	if (!g || !(g->connections.blob[0] = registry_client_dup(client)) ||
	    (window_client && !(g->connections.windows = registry_client_dup(window_client)))) {
		if (g)
			registry_client_free(g->connections.blob[0]);
		free(g);
		py_packages_free(packages);
		return -ENOMEM;
	}
	g->l = l;
	g->packages = packages;
	pthread_mutex_init(&g->lock, NULL);
	pthread_cond_init(&g->wake, NULL);
	*ret = g;
	return 0;
}

static void *guess_main(void *arg)
{
	struct remote_guess *g = arg;
	const struct entry **files = calloc(GUESS_FILES, sizeof(*files));
	pthread_mutex_lock(&g->lock);
	while (files && !atomic_load(&g->stop)) {
		if (!g->queue_len) {
			pthread_cond_wait(&g->wake, &g->lock);
			continue;
		}
		const struct entry *e = g->queue[g->queue_head];
		uint64_t windows_end = g->windows_end[g->queue_head];
		g->queue_head = (g->queue_head + 1) % QUEUE_LEN;
		g->queue_len--;
		pthread_mutex_unlock(&g->lock);
		if (windows_end) {
			(void)rb_prefetch_file_windows(g->l, e, windows_end, g->connections.windows, &g->stop);
			pthread_mutex_lock(&g->lock);
			continue;
		}
		size_t n = py_package_guess(g->packages, e, files, GUESS_FILES);
		uint64_t left = g->spent < LAYER_BYTES ? LAYER_BYTES - g->spent : 0, bytes = 0;
		if (left)
			(void)rb_prefetch_files(g->l, files, n, GUESS_HEAD, left < GUESS_BYTES ? left : GUESS_BYTES,
						&g->connections, &g->stop, &bytes);
		g->spent += bytes;
		pthread_mutex_lock(&g->lock);
	}
	pthread_mutex_unlock(&g->lock);
	free(files);
	return NULL;
}

static void queue(struct remote_guess *g, const struct entry *e, uint64_t windows_end)
{
	pthread_mutex_lock(&g->lock);
	/* The thread starts with the first guess: in the process that serves
	 * the mount, not in the one that set it up. */
	if (!g->started)
		g->started = pthread_create(&g->thread, NULL, guess_main, g) == 0;
	/* A full queue drops the guess: reads are outrunning the thread. */
	if (g->started && g->queue_len < QUEUE_LEN) {
		g->windows_end[(g->queue_head + g->queue_len) % QUEUE_LEN] = windows_end;
		g->queue[(g->queue_head + g->queue_len++) % QUEUE_LEN] = e;
		pthread_cond_signal(&g->wake);
	}
	pthread_mutex_unlock(&g->lock);
}

void remote_guess_note(struct remote_guess *g, const struct entry *e)
{
	if (g && !e->prefetch && py_package_first_read(g->packages, e))
		queue(g, e, 0);
}

void remote_guess_windows(struct remote_guess *g, const struct entry *e, uint64_t end)
{
	if (g && g->connections.windows && end)
		queue(g, e, end);
}

void remote_guess_free(struct remote_guess *g)
{
	if (!g)
		return;
	pthread_mutex_lock(&g->lock);
	atomic_store(&g->stop, true);
	pthread_cond_broadcast(&g->wake);
	pthread_mutex_unlock(&g->lock);
	if (g->started)
		pthread_join(g->thread, NULL);
	pthread_mutex_destroy(&g->lock);
	pthread_cond_destroy(&g->wake);
	rb_connections_done(&g->connections);
	registry_client_free(g->connections.blob[0]);
	registry_client_free(g->connections.windows);
	py_packages_free(g->packages);
	free(g);
}
