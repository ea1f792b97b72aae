/* imgfs login and logout: credentials where podman login keeps them. */
#pragma once

int login_main(int argc, char **argv);
int logout_main(int argc, char **argv);
