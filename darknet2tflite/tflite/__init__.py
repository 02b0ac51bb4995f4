"""TFLite files: conversion, the interpreter, flatbuffer and op inspection, metrics."""
