from django.db import models

from library.models import Book


class Order(models.Model):
    book = models.ForeignKey(Book, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField(default=1)
    placed = models.DateTimeField(auto_now_add=True)
    note = models.TextField(blank=True)
