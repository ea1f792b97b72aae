/* The layer source of a blob that is whole in the cache: its tar stream is
 * decoded from the local file (private to fs/). */
#pragma once

#include "layer.h"

/* Makes l read its files from l->blob_fd, which the layer owns. */
void local_blob_attach(struct layer *l);
