"""The stateful API behind the function-calling environment: a small store of users, products
and orders, seven functions described by JSON Schema, and the checks of a database's shape.

A database is plain JSON (money in whole dollars, so states compare exactly)::

    {"users": {"u1": {"name": "Ana Ruiz", "balance": 120, "orders": ["o1", "o3"]}},
     "products": {"lamp": {"price": 25, "stock": 4}},
     "orders": {"o1": {"user_id": "u1", "product": "lamp", "quantity": 1, "total": 25, "status": "pending"}}}

A cancelled order also records its ``reason``. Every function checks all its preconditions
before it changes anything, so a failed call leaves the database as it was; a failure is a
``ToolError`` whose kind (``not_found``, ``precondition_failed``) and message the environment
returns to the policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .argschema import Schema, validate

Database = dict[str, dict[str, dict[str, Any]]]

STATUSES: tuple[str, ...] = ("pending", "shipped", "delivered", "cancelled", "returned")
REASONS: tuple[str, ...] = ("no longer needed", "ordered by mistake")
MAX_QUANTITY = 10
#: Bounds on a database's size, so a task file cannot make every call or comparison slow.
MAX_RECORDS = {"users": 50, "products": 50, "orders": 200}


class ToolError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    #: JSON Schema of the arguments object.
    parameters: Schema
    #: Applies a call with valid arguments to the database (in place) and returns its JSON result.
    run: Callable[[Database, dict[str, Any]], dict[str, Any]]
    #: Whether a successful call can change the database.
    writes: bool


def _string(description: str) -> Schema:
    return {"type": "string", "description": description}


def _quantity(description: str) -> Schema:
    return {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY, "description": description}


def _arguments(properties: dict[str, Schema]) -> Schema:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


# -- lookups ----------------------------------------------------------------------------------


def _user(db: Database, user_id: str) -> dict[str, Any]:
    user = db["users"].get(user_id)
    if user is None:
        raise ToolError("not_found", f"no user with id {user_id!r}")
    return user


def _order(db: Database, order_id: str) -> dict[str, Any]:
    order = db["orders"].get(order_id)
    if order is None:
        raise ToolError("not_found", f"no order with id {order_id!r}")
    return order


def _product(db: Database, name: str) -> dict[str, Any]:
    product = db["products"].get(name)
    if product is None:
        raise ToolError("not_found", f"no product named {name!r}")
    return product


def _require_status(order_id: str, order: dict[str, Any], status: str, action: str) -> None:
    if order["status"] != status:
        raise ToolError(
            "precondition_failed", f"order {order_id} is {order['status']} ; only {status} orders can be {action}"
        )


def _require_funds(user: dict[str, Any], amount: int) -> None:
    if user["balance"] < amount:
        raise ToolError("precondition_failed", f"balance {user['balance']} is less than the total {amount}")


def _require_stock(name: str, product: dict[str, Any], quantity: int) -> None:
    if product["stock"] < quantity:
        raise ToolError("precondition_failed", f"only {product['stock']} {name} in stock")


# -- the functions ----------------------------------------------------------------------------


def find_user(db: Database, args: dict[str, Any]) -> dict[str, Any]:
    wanted = " ".join(args["name"].split()).lower()
    for user_id in sorted(db["users"]):
        user = db["users"][user_id]
        if user["name"].lower() == wanted:
            orders = list(user["orders"])
            return {"user_id": user_id, "name": user["name"], "balance": user["balance"], "orders": orders}
    raise ToolError("not_found", f"no user named {args['name']!r}")


def get_order(db: Database, args: dict[str, Any]) -> dict[str, Any]:
    return {"order_id": args["order_id"], **_order(db, args["order_id"])}


def get_product(db: Database, args: dict[str, Any]) -> dict[str, Any]:
    return {"product": args["product"], **_product(db, args["product"])}


def place_order(db: Database, args: dict[str, Any]) -> dict[str, Any]:
    user, name, quantity = _user(db, args["user_id"]), args["product"], args["quantity"]
    product = _product(db, name)
    total = product["price"] * quantity
    _require_stock(name, product, quantity)
    _require_funds(user, total)
    order_id = next_order_id(db)
    product["stock"] -= quantity
    user["balance"] -= total
    user["orders"].append(order_id)
    db["orders"][order_id] = {
        "user_id": args["user_id"],
        "product": name,
        "quantity": quantity,
        "total": total,
        "status": "pending",
    }
    return {"order_id": order_id, "status": "pending", "total": total, "balance": user["balance"]}


def cancel_order(db: Database, args: dict[str, Any]) -> dict[str, Any]:
    order_id = args["order_id"]
    order = _order(db, order_id)
    _require_status(order_id, order, "pending", "cancelled")
    return _refund(db, order_id, order, "cancelled", reason=args["reason"])


def return_order(db: Database, args: dict[str, Any]) -> dict[str, Any]:
    order_id = args["order_id"]
    order = _order(db, order_id)
    _require_status(order_id, order, "delivered", "returned")
    return _refund(db, order_id, order, "returned")


def _refund(db: Database, order_id: str, order: dict[str, Any], status: str, **extra: str) -> dict[str, Any]:
    user = db["users"][order["user_id"]]
    db["products"][order["product"]]["stock"] += order["quantity"]
    user["balance"] += order["total"]
    order.update(status=status, **extra)
    return {"order_id": order_id, "status": status, "refund": order["total"], "balance": user["balance"]}


def change_quantity(db: Database, args: dict[str, Any]) -> dict[str, Any]:
    order_id, quantity = args["order_id"], args["quantity"]
    order = _order(db, order_id)
    _require_status(order_id, order, "pending", "changed")
    user, product = db["users"][order["user_id"]], db["products"][order["product"]]
    more = quantity - order["quantity"]
    # The order keeps the unit price it was placed at.
    extra_cost = more * (order["total"] // order["quantity"])
    if more > 0:
        _require_stock(order["product"], product, more)
        _require_funds(user, extra_cost)
    product["stock"] -= more
    user["balance"] -= extra_cost
    order.update(quantity=quantity, total=order["total"] + extra_cost)
    return {"order_id": order_id, "quantity": quantity, "total": order["total"], "balance": user["balance"]}


def next_order_id(db: Database) -> str:
    """The id a new order gets: the first free ``o<n>`` from the number of orders up."""
    number = len(db["orders"]) + 1
    while f"o{number}" in db["orders"]:
        number += 1
    return f"o{number}"


TOOLS: dict[str, Tool] = {
    tool.name: tool
    for tool in (
        Tool(
            "find_user", "look up a customer by full name", _arguments({"name": _string("full name")}), find_user, False
        ),
        Tool("get_order", "the details of an order", _arguments({"order_id": _string("order id")}), get_order, False),
        Tool(
            "get_product",
            "price and stock of a product",
            _arguments({"product": _string("product name")}),
            get_product,
            False,
        ),
        Tool(
            "place_order",
            "order a product for a customer , paid from the balance",
            _arguments(
                {
                    "user_id": _string("customer id"),
                    "product": _string("product name"),
                    "quantity": _quantity("how many"),
                }
            ),
            place_order,
            True,
        ),
        Tool(
            "cancel_order",
            "cancel a pending order and refund it",
            _arguments(
                {
                    "order_id": _string("order id"),
                    "reason": {"type": "string", "enum": list(REASONS), "description": "why"},
                }
            ),
            cancel_order,
            True,
        ),
        Tool(
            "return_order",
            "return a delivered order and refund it",
            _arguments({"order_id": _string("order id")}),
            return_order,
            True,
        ),
        Tool(
            "change_quantity",
            "change the quantity of a pending order",
            _arguments({"order_id": _string("order id"), "quantity": _quantity("new quantity")}),
            change_quantity,
            True,
        ),
    )
}


def signature(tool: Tool) -> str:
    """One line the prompt shows for ``tool``, rendered from its schema:
    ``cancel_order ( order_id : string , reason : "no longer needed" | "ordered by mistake" ) : ...``."""
    params = []
    for name, schema in tool.parameters["properties"].items():
        if "enum" in schema:
            kind = " | ".join(f'"{v}"' for v in schema["enum"])
        elif "minimum" in schema and "maximum" in schema:
            kind = f"{schema['type']} {schema['minimum']} to {schema['maximum']}"
        else:
            kind = schema["type"]
        params.append(f"{name} : {kind}")
    return f"{tool.name} ( {' , '.join(params)} ) : {tool.description}"


# -- the shape of a database ------------------------------------------------------------------


def _record(properties: dict[str, Schema], optional: tuple[str, ...] = ()) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": [p for p in properties if p not in optional],
        "additionalProperties": False,
    }


_COUNT = {"type": "integer", "minimum": 0}
DATABASE_SCHEMA: Schema = _record(
    {
        "users": {
            "type": "object",
            "additionalProperties": _record(
                {
                    "name": {"type": "string"},
                    "balance": _COUNT,
                    "orders": {"type": "array", "items": {"type": "string"}},
                }
            ),
        },
        "products": {
            "type": "object",
            "additionalProperties": _record({"price": {"type": "integer", "minimum": 1}, "stock": _COUNT}),
        },
        "orders": {
            "type": "object",
            "additionalProperties": _record(
                {
                    "user_id": {"type": "string"},
                    "product": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1},
                    "total": _COUNT,
                    "status": {"type": "string", "enum": list(STATUSES)},
                    "reason": {"type": "string", "enum": list(REASONS)},
                },
                optional=("reason",),
            ),
        },
    }
)


def database_problems(db: Any, where: str = "database") -> list[str]:
    """Everything wrong with ``db`` as a store database: its schema, then its references
    (orders of existing users and products, listed by their user), unique user names, whole
    unit prices and a reason exactly on cancelled orders. ``[]`` when it is sound."""
    problems = validate(db, DATABASE_SCHEMA, where)
    if problems:
        return problems
    for table, limit in MAX_RECORDS.items():
        if len(db[table]) > limit:
            problems.append(f"{where}.{table}: at most {limit} records, got {len(db[table])}")
    names = [u["name"].lower() for u in db["users"].values()]
    if len(set(names)) != len(names):
        problems.append(f"{where}.users: two users share a name")
    for user_id, user in db["users"].items():
        for order_id in user["orders"]:
            if db["orders"].get(order_id, {}).get("user_id") != user_id:
                problems.append(f"{where}.users.{user_id}: lists order {order_id!r} that is not theirs")
    for order_id, order in db["orders"].items():
        here = f"{where}.orders.{order_id}"
        if order_id not in db["users"].get(order["user_id"], {}).get("orders", []):
            problems.append(f"{here}: its user {order['user_id']!r} does not list it")
        if order["product"] not in db["products"]:
            problems.append(f"{here}: unknown product {order['product']!r}")
        if order["total"] % order["quantity"]:
            problems.append(f"{here}: total {order['total']} is not a whole price per unit")
        if ("reason" in order) != (order["status"] == "cancelled"):
            problems.append(f"{here}: a reason is recorded exactly on cancelled orders")
    return problems


def copy_database(db: Database) -> Database:
    return {
        "users": {k: {**u, "orders": list(u["orders"])} for k, u in db["users"].items()},
        "products": {k: dict(p) for k, p in db["products"].items()},
        "orders": {k: dict(o) for k, o in db["orders"].items()},
    }
