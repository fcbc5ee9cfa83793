#!/usr/bin/env node
// A committed launcher, so npm can link the binary at install time, before dist/ is built.
import '../dist/main.js';
