"""Reads a visitor's parquet file for ``engine.corpus.tables``, in a process of its own
(``engine.guard.isolated``): pyarrow aborts the process on some malformed footers.

Run as a script, never imported: it uses only the standard library and pyarrow. The request on
stdin says what to do (``schema``: the column names, which hold text and which hold lists of
integers, and the footer's sizes; ``read``: the picked columns, decoded in batches and counted);
the answer goes to stdout as JSON. Its memory and CPU time are capped before pyarrow is imported.
"""
import json
import resource
import sys

ANSWER_LIMIT_ERRORS = 200
INT_BYTES = 8
FOOTER_STRING_LIMIT = 16 * 2**20  # thrift strings and containers of the footer, against a forged one
FOOTER_CONTAINER_LIMIT = 1_000_000


def cap(limits):
    memory, seconds = limits["memory_bytes"], limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_DATA, (memory, memory))
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds))


def is_text(arrow_type, pa):
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_string_view(arrow_type)


def is_ids(arrow_type, pa):
    if not (pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type)):
        return False
    return pa.types.is_integer(arrow_type.value_type) or pa.types.is_boolean(arrow_type.value_type)


def open_file(path):
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, thrift_string_size_limit=FOOTER_STRING_LIMIT, thrift_container_size_limit=FOOTER_CONTAINER_LIMIT)


def schema(request):
    """The columns, which hold text and which lists of integers, the rows, and what each column takes
    once decompressed by the footer's word (every column's chunks summed)."""
    import pyarrow as pa

    parquet = open_file(request["path"])
    arrow = parquet.schema_arrow
    names = [str(name) for name in arrow.names]
    sizes = {name: 0 for name in names}
    meta = parquet.metadata
    for root, chunk in column_chunks(meta):
        if root in sizes:
            sizes[root] += max(0, chunk.total_uncompressed_size)
    return {"columns": names, "textual": [n for n in names if is_text(arrow.field(n).type, pa)],
            "lists": [n for n in names if is_ids(arrow.field(n).type, pa)], "rows": meta.num_rows,
            "decompressed": sizes}


def column_chunks(meta):
    """Every column chunk the footer lists, with the top-level column it belongs to."""
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        for index in range(min(row_group.num_columns, meta.num_columns)):
            chunk = row_group.column(index)
            yield chunk.path_in_schema.split(".")[0], chunk


def chunk_sizes(parquet, picked, lists):
    """What the footer says the picked columns take once decompressed, and their ids (8 bytes each)."""
    sizes, ids, largest = 0, 0, 1
    for root, chunk in column_chunks(parquet.metadata):
        if root in picked:
            sizes += max(0, chunk.total_uncompressed_size)
            largest = max(largest, chunk.total_uncompressed_size)
            ids += INT_BYTES * max(0, chunk.num_values) if root in lists else 0
    return sizes, ids, largest


def decoded(array, pa, pc):
    """Python values of one column batch and the bytes they hold."""
    if is_ids(array.type, pa):
        values = [None if row is None else [int(v or 0) for v in row] for row in array.to_pylist()]
        return values, INT_BYTES * sum(len(row) for row in values if row is not None)
    if is_text(array.type, pa):
        return array.to_pylist(), int(pc.sum(pc.binary_length(array)).as_py() or 0)
    return [None if v is None else str(v) for v in array.to_pylist()], array.nbytes


def read(request):
    import pyarrow as pa
    import pyarrow.compute as pc

    parquet = open_file(request["path"])
    picked, max_bytes, max_records = request["columns"], request["max_bytes"], request["max_records"]
    arrow = parquet.schema_arrow
    lists = [name for name in picked if is_ids(arrow.field(name).type, pa)]
    sizes, ids, largest = chunk_sizes(parquet, set(picked), set(lists))
    rows = parquet.metadata.num_rows
    if max(sizes, ids) > max_bytes or rows > max_records:
        return {"over": {"bytes": max(sizes, ids), "records": rows, "when": "footer"}}
    # no value is longer than the decompressed chunk that holds it: batches of this many rows stay
    # within batch_bytes whatever the encoding (dictionary, delta) multiplies
    batch = int(min(1024, max(1, request["batch_bytes"] // max(largest, 1))))
    values, total, count = {name: [] for name in picked}, 0, 0
    for part in parquet.iter_batches(batch_size=batch, columns=picked, use_threads=False):
        for name in picked:
            column, size = decoded(part.column(name), pa, pc)
            values[name].extend(column)
            total += size
        count += part.num_rows
        if total > max_bytes or count > max_records:
            return {"over": {"bytes": total, "records": count, "when": "reading"}}
    return {"values": values, "bytes": total, "records": count}


def main():
    request = json.load(sys.stdin)
    cap(request["limits"])
    try:
        answer = {"schema": schema, "read": read}[request["action"]](request)
    except MemoryError:
        answer = {"over_memory": True}
    except Exception as error:  # noqa: BLE001 - every failure of a malformed file is the answer itself
        answer = {"error": (str(error).splitlines() or [type(error).__name__])[0][:ANSWER_LIMIT_ERRORS]}
    json.dump(answer, sys.stdout)


if __name__ == "__main__":
    main()
