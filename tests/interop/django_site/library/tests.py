from decimal import Decimal

from django.db import IntegrityError, transaction
from django.test import TestCase

from .models import Author, Book


class BookTests(TestCase):
    def test_the_seeded_author_is_there(self):
        self.assertTrue(Author.objects.filter(name="Ursula K. Le Guin").exists())

    def test_books_follow_their_author(self):
        a = Author.objects.create(name="Someone")
        Book.objects.create(author=a, title="One", isbn="1", price=Decimal("9.50"))
        Book.objects.create(author=a, title="Two", isbn="2", price=Decimal("10.00"))
        self.assertEqual(list(a.books.order_by("title").values_list("title", flat=True)), ["One", "Two"])
        self.assertEqual(Book.objects.get(title="One").price, Decimal("9.50"))

    def test_a_title_is_unique_per_author(self):
        a = Author.objects.create(name="Twice")
        Book.objects.create(author=a, title="Same", isbn="1", price=1)
        with self.assertRaises(IntegrityError), transaction.atomic():
            Book.objects.create(author=a, title="Same", isbn="2", price=1)


class AdminTests(TestCase):
    def test_the_admin_lists_books(self):
        from django.contrib.auth.models import User

        admin = User.objects.create_superuser("boss", "boss@example.com", "pw")
        self.client.force_login(admin)
        a = Author.objects.create(name="Listed")
        Book.objects.create(author=a, title="On the list", isbn="4", price=3)
        page = self.client.get("/admin/library/book/")
        self.assertEqual(page.status_code, 200)
        self.assertContains(page, "1 book")
