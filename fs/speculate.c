/* The files beside a miss, fetched ahead: see speculate.h. */
#include "speculate.h"

#include "file_groups.h"
#include "py_package.h"
#include "registry.h"

/* A directory's guess stops here: one range of this size is ~170 ms on a
 * 100 Mbit/s link, a few round trips, and a large directory (a library
 * directory of thousands of files) is mostly not what a program reads. */
#define DIR_BYTES (2u << 20)
/* A large file beside a miss is usually mapped and read in part: its
 * start (headers, the ELF tables) is what the guess is for. */
#define FILE_BYTES (512u << 10)
/* All guesses of one layer: past this a workload is reading far more
 * than a start does, and guessing only competes with its reads. */
#define LAYER_BYTES (64ull << 20)
#define DIR_FILES 512
/* Only misses of small files (a module, a data file) count towards their
 * directory's guess, and only from the second: a program reads one file
 * of many directories (an executable of usr/bin, a cache of gconv/, a
 * library of a directory of a thousand), and a guess after the first miss
 * fetched 2 MB of each for nothing.  On tools/bench-link's numpy start the
 * eStargz row fetched 34.7-34.9 MB instead of 39.6 MB, in 4.42-4.50 s
 * instead of 4.66-4.79 s (alternated); a directory the program does read
 * from costs one more round trip.  Libraries are guessed from the ELF
 * headers that name them (elf_guess.c), not from their neighbours. */
#define SMALL_FILE_BYTES (64u << 10)
#define MISSES_BEFORE_GUESS 2
/* A Python package's guess: an interpreter imports a package's
 * subpackages one after another, each import a miss known only once the
 * one before has run, and a package's modules lie in its whole tree, not
 * in one directory.  On tools/bench-link's numpy start (eStargz, no
 * profile) guessing the package at its first module took 52 requests
 * instead of 77 and 3.9 s instead of 4.3 s; numpy's guess is 3.3 MB (its
 * compiled modules and its extension modules' heads, tests left out), of
 * which the start reads 2.6. */
#define PACKAGE_BYTES (8u << 20)
#define PACKAGE_FILES 2048
#define WORKERS 2
#define QUEUE_LEN 32
/* On a queued place: guess its package, not its directory. */
#define PACKAGE_GUESS (1u << 31)

struct speculation {
	struct speculation_ops ops;
	/* Regular files with chunks, by directory then blob order. */
	struct file_groups dirs;
	struct py_packages *packages; /* NULL: the layer has none */

	pthread_mutex_t lock; /* over the fields below */
	pthread_cond_t wake;
	uint8_t *misses; /* per index of a directory's start: small-file misses seen, up to its guess */
	uint32_t queue[QUEUE_LEN];
	size_t queue_head, queue_len;
	uint64_t claimed;
	bool running;
	atomic_bool stop;
	pthread_t threads[WORKERS];
	size_t n_threads;
};

int speculation_new(const struct layer *l, const struct speculation_ops *ops, struct speculation **ret)
{
	if (l->n_entries >= PACKAGE_GUESS)
		return -EFBIG;
	struct speculation *s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->ops = *ops;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->wake, NULL);
	size_t n = l->n_entries ? l->n_entries : 1, n_files = 0;
	s->misses = calloc(n, sizeof(*s->misses));
	struct file_group_key *keys = malloc(n * sizeof(*keys));
	if (!s->misses || !keys) {
		free(keys);
		speculation_free(s);
		return -ENOMEM;
	}
	for (size_t i = 0; i < l->n_entries; i++) {
		const struct entry *e = &l->entries[i];
		if (e->type == ENTRY_REG && e->n_chunks > 0)
			keys[n_files++] = (struct file_group_key){ e, path_dir_len(e->path), e->chunks[0].comp_off };
	}
	int r = file_groups_build(&s->dirs, l->entries, l->n_entries, keys, n_files);
	free(keys);
	if (r == 0)
		r = py_packages_new(l->entries, l->n_entries, &s->packages);
	if (r < 0) {
		speculation_free(s);
		return r;
	}
	*ret = s;
	return 0;
}

/* The directory of the file at place, from the file after it round to the
 * one before: what follows a file in the blob is likeliest read next. */
static size_t dir_guess(const struct speculation *s, uint32_t place, const struct entry **out)
{
	const struct file_groups *g = &s->dirs;
	size_t n = 0;
	for (uint32_t i = place + 1; i < g->end[place] && n < DIR_FILES; i++)
		out[n++] = g->files[i];
	for (uint32_t i = g->first[place]; i < place && n < DIR_FILES; i++)
		out[n++] = g->files[i];
	return n;
}

static void *worker_main(void *arg)
{
	struct speculation *s = arg;
	struct registry_client *client = s->ops.new_client(s->ops.ctx);
	const struct entry **files = calloc(PACKAGE_FILES > DIR_FILES ? PACKAGE_FILES : DIR_FILES, sizeof(*files));
	pthread_mutex_lock(&s->lock);
	while (client && files && !atomic_load(&s->stop)) {
		if (!s->queue_len) {
			pthread_cond_wait(&s->wake, &s->lock);
			continue;
		}
		uint32_t place = s->queue[s->queue_head];
		s->queue_head = (s->queue_head + 1) % QUEUE_LEN;
		s->queue_len--;
		uint64_t budget = s->claimed < LAYER_BYTES ? LAYER_BYTES - s->claimed : 0;
		pthread_mutex_unlock(&s->lock);
		bool package = place & PACKAGE_GUESS;
		place &= ~PACKAGE_GUESS;
		size_t n = package ? py_package_guess(s->packages, s->dirs.files[place], files, PACKAGE_FILES)
				   : dir_guess(s, place, files);
		uint64_t most = package ? PACKAGE_BYTES : DIR_BYTES;
		uint64_t claimed = n && budget ? s->ops.fetch(s->ops.ctx, files, n, FILE_BYTES,
							      budget < most ? budget : most, client, &s->stop)
					       : 0;
		pthread_mutex_lock(&s->lock);
		s->claimed += claimed;
	}
	pthread_mutex_unlock(&s->lock);
	free(files);
	registry_client_free(client);
	return NULL;
}

void speculation_start(struct speculation *s)
{
	pthread_mutex_lock(&s->lock);
	if (!s->running && s->dirs.n_files > 1) {
		atomic_store(&s->stop, false);
		for (; s->n_threads < WORKERS; s->n_threads++)
			if (pthread_create(&s->threads[s->n_threads], NULL, worker_main, s) != 0)
				break;
		s->running = s->n_threads > 0;
	}
	pthread_mutex_unlock(&s->lock);
}

/* A full queue drops the guess: reads are outrunning the workers. */
static void queue_locked(struct speculation *s, uint32_t item)
{
	if (s->claimed < LAYER_BYTES && s->queue_len < QUEUE_LEN) {
		s->queue[(s->queue_head + s->queue_len++) % QUEUE_LEN] = item;
		pthread_cond_signal(&s->wake);
	}
}

void speculation_note_first_read(struct speculation *s, const struct entry *e)
{
	uint32_t place = file_groups_place(&s->dirs, e);
	if (place == FILE_GROUPS_NOWHERE || e->prefetch)
		return;
	pthread_mutex_lock(&s->lock);
	if (s->running && py_package_first_read(s->packages, e))
		queue_locked(s, place | PACKAGE_GUESS);
	pthread_mutex_unlock(&s->lock);
}

void speculation_note_miss(struct speculation *s, const struct entry *e)
{
	uint32_t place = file_groups_place(&s->dirs, e);
	if (place == FILE_GROUPS_NOWHERE || e->size > SMALL_FILE_BYTES)
		return;
	uint32_t first = s->dirs.first[place];
	if (s->dirs.end[place] - first < 2)
		return;
	pthread_mutex_lock(&s->lock);
	if (s->running && s->misses[first] < MISSES_BEFORE_GUESS && ++s->misses[first] == MISSES_BEFORE_GUESS)
		queue_locked(s, place);
	pthread_mutex_unlock(&s->lock);
}

void speculation_stop(struct speculation *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	atomic_store(&s->stop, true);
	pthread_cond_broadcast(&s->wake);
	size_t n = s->n_threads;
	s->n_threads = 0;
	s->running = false;
	s->queue_len = 0;
	pthread_mutex_unlock(&s->lock);
	for (size_t i = 0; i < n; i++)
		pthread_join(s->threads[i], NULL);
}

void speculation_free(struct speculation *s)
{
	if (!s)
		return;
	speculation_stop(s);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->wake);
	file_groups_done(&s->dirs);
	free(s->misses);
	py_packages_free(s->packages);
	free(s);
}
