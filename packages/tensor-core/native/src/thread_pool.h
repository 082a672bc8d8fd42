// A persistent pool of worker threads shared by every kernel (and, through the SDK table, by other addons).
#pragma once

#define TL_CORE 1
#include "tiny_llm/extension.h"
