"""Type stubs of lowbit's native module (crates/lowbit-python). Use the `lowbit` package's
wrappers; these are the calls they make."""

from os import PathLike
from typing import List, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

class LowbitError(Exception):
    """What lowbit refused or could not do; the message names the file, node and reason."""

class Model:
    def __init__(self, path: Union[str, PathLike[str]], threads: int = 1) -> None: ...
    def run(self, inputs: Sequence[npt.NDArray[np.generic]]) -> List[npt.NDArray[np.generic]]: ...
    @property
    def input_names(self) -> List[str]: ...
    @property
    def input_shapes(self) -> List[Optional[List[Optional[int]]]]: ...
    @property
    def input_dtypes(self) -> List[str]: ...
    @property
    def output_names(self) -> List[str]: ...
    @property
    def path(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def plans_compiled(self) -> int: ...

def quantize(
    flags: List[str],
    calib: Optional[npt.NDArray[np.float32]] = None,
    labels: Optional[List[int]] = None,
    calib_path: Optional[str] = None,
    verbose: bool = False,
) -> str: ...
def check_quantize(flags: List[str], calib_path: Optional[str] = None, arrays: bool = False) -> None: ...
def evaluate(
    model: str,
    data: Optional[npt.NDArray[np.float32]] = None,
    labels: Optional[List[int]] = None,
    data_path: Optional[str] = None,
    reference: Optional[str] = None,
    preset: Optional[str] = None,
    split: str = "test",
    limit: Optional[int] = None,
    batch: int = 50,
    threads: int = 1,
    json: Optional[str] = None,
    verbose: bool = False,
) -> str: ...
def bench(
    model: str,
    batch: int = 1,
    threads: int = 1,
    iters: int = 50,
    warmup: int = 10,
    input_shape: Optional[List[int]] = None,
    json: Optional[str] = None,
    verbose: bool = False,
) -> str: ...
def inspect(
    model: str, input_shape: Optional[List[int]] = None, json: Optional[str] = None, verbose: bool = False
) -> str: ...
def cpu() -> str: ...
