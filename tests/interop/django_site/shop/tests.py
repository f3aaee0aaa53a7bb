from django.test import TestCase

from library.models import Author, Book
from shop.models import Order


class OrderTests(TestCase):
    def test_an_order_counts_its_books(self):
        a = Author.objects.create(name="Seller")
        b = Book.objects.create(author=a, title="Stock", isbn="3", price=5)
        Order.objects.create(book=b, quantity=3)
        Order.objects.create(book=b)
        self.assertEqual(sum(o.quantity for o in Order.objects.filter(book__author=a)), 4)
