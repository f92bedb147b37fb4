from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse

from shop.models import Item


def count(request: HttpRequest) -> HttpResponse:
    return HttpResponse(str(Item.objects.count()))


def backend_pid(request: HttpRequest) -> HttpResponse:
    with connection.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return HttpResponse(str(cur.fetchone()[0]))


def buy(request: HttpRequest, name: str) -> HttpResponse:
    with transaction.atomic():
        item = Item.objects.select_for_update().get(name=name)
        item.stock -= 1
        item.save()
    return HttpResponse(str(item.stock))
