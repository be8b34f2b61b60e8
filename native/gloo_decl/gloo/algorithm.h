// Declarations only (see ../README.md): nothing from gloo/algorithm.h is used by peft-node.
#pragma once
