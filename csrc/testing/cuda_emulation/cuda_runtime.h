// The host emulation of CUDA (emulation.h) under the name the sources include.
#pragma once
#include "emulation.h"
