/* imgfs index push and imgfs profile push: artifacts that refer to an
 * image, in its repository or in an index repository (--index-repo). */
#pragma once

int cmd_index(int argc, char **argv);
int cmd_profile(int argc, char **argv);
