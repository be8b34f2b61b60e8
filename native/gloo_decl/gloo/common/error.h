// Declarations only (see ../../README.md): nothing from gloo/common/error.h is used by peft-node.
#pragma once
