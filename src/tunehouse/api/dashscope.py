"""Placeholder router; the dashscope dialect is being built."""

from fastapi import APIRouter

router = APIRouter()
